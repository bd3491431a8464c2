"""torchrun entry point: serve a `kind: "serve"` plan's request stream for real and write measured.json.

    torchrun --standalone --nproc-per-node 2 -m executor.serve --plan serve.json --out measured.json

Every rank builds the executor's model (executor/model.py; tensor parallel with DTensor when tp > 1,
executor/tensor_parallel.py) and a KV cache (executor/kv_cache.py). Rank 0 runs the engine's
scheduler (planner/serve/scheduler.py, the one the planner's simulation runs) against the wall clock:
requests arrive as the plan's workload says (a closed loop of users, or Poisson / evenly spaced
arrivals), and before each step rank 0 broadcasts the step's batch (request, cache slot, position,
token count) to the other ranks, as vLLM's driver broadcasts its scheduler output. Every rank samples
the same greedy token from the replicated logits. Each request's arrival, first token and finish
time go to measured.json, with the statistics computed exactly as the simulation computes its own
(planner.serve.stream.stream_result), and every step's batch and duration.

`--calibrate` instead times decode steps of small calibration models (1 and 5 layers, batch 1 and 8)
for `planner validate --serve` to fit the serving host overheads, and (on one rank) forward-only GEMMs
and weight-streaming GEMVs (planner/serve/calibrate.py).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from executor.errors import UnsupportedPlan
from executor.kv_cache import CachedForward, KVCache, Segment, check_servable
from executor.model import Transformer, build_model, init_weights
from executor.rank_exit import exit_rank
from planner.errors import PlannerError
from planner.io import atomic_write_json, load_json
from planner.plan import plan_hash
from planner.serve.plan import ServeDocument, load_serve_plan
from planner.serve.scheduler import Batch, Request, Scheduler
from planner.serve.stream import ENGINE_WARMUP_REQUESTS, arrival_times, measured_ids, percentiles, stream_result
from planner.specs.model import ModelSpec

FIELDS = 5  # per segment in the broadcast descriptor: request id, slot, start, tokens, sample
STOP = -1


def check_executable(doc: ServeDocument) -> None:
    """Raise UnsupportedPlan for serving plans this executor cannot run (before any process starts)."""
    plan = doc.plan
    if plan.disaggregated:
        raise UnsupportedPlan("disaggregated serving is planned and exported but not run by the executor yet",
                              field="pools")
    pool = plan.pools[0]
    for name in ("pp", "ep", "attention_dp", "replicas"):
        if getattr(pool, name) != 1:
            raise UnsupportedPlan(f"the executor serves one replica with tensor parallelism only ({name} "
                                  f"{getattr(pool, name)})", field=name)
    if doc.model.num_kv_heads % pool.tp:
        raise UnsupportedPlan(f"tp {pool.tp} must divide num_kv_heads {doc.model.num_kv_heads} in the executor",
                              field="tp")
    if plan.dtype not in ("fp32", "bf16", "fp16") or plan.kv_dtype not in ("fp32", "bf16", "fp16"):
        raise UnsupportedPlan(f"the executor serves fp32 / bf16 / fp16 weights and KV cache, not {plan.dtype} / "
                              f"{plan.kv_dtype}", field="dtype")
    check_servable(doc.model)


def kv_slots(doc: ServeDocument) -> int:
    """Requests the scheduler runs at once: the planner's KV capacity and batch limit for this plan."""
    from planner.serve.predict import pool_model

    return pool_model(doc.model, doc.cluster, doc.plan, doc.plan.pools[0], doc.workload).slots


def build(spec: ModelSpec, tp: int, device: torch.device, dtype: torch.dtype, seed: int) -> Transformer:
    """The model, sharded over a tp-rank mesh when tp > 1, initialised as executor.model does."""
    if tp == 1:
        return build_model(spec, seed=seed, device=device).to(dtype).eval()
    from torch.distributed.device_mesh import init_device_mesh

    from executor.tensor_parallel import apply_tp

    mesh = init_device_mesh(device.type, (tp,), mesh_dim_names=("tp",))
    with torch.device("meta"):
        model = Transformer(spec)
    apply_tp(model, mesh["tp"], False)
    model.to_empty(device=device)
    model.tie_weights()
    init_weights(model, spec, seed)
    return model.to(dtype).eval()


def prompt_tokens(request_id: int, isl: int, vocab: int, seed: int) -> torch.Tensor:
    """The prompt of request `request_id` (every rank draws the same)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + request_id)
    return torch.randint(0, vocab, (isl,), generator=g)


class Engine:
    """One serving replica's ranks: rank 0 schedules and broadcasts, every rank runs the steps."""

    def __init__(self, doc: ServeDocument, forward: CachedForward, rank: int, world: int, device: torch.device,
                 seed: int) -> None:
        self.doc, self.forward, self.rank, self.world = doc, forward, rank, world
        pool = doc.plan.pools[0]
        self.isl, self.osl = doc.workload.isl, doc.workload.osl
        self.max_segments = pool.max_batch + 4
        self.buf = torch.zeros(1 + FIELDS * self.max_segments, dtype=torch.long)
        self.last: dict[int, int] = {}  # request id -> last sampled token (every rank)
        self.vocab = doc.model.vocab_size
        self.seed = seed
        self.device = device
        self.steps: list[list[float]] = []
        self.outputs: dict[int, list[int]] = {}  # request id -> sampled tokens (rank 0)

    # ---- rank 0 ------------------------------------------------------------------------------------

    def _segments_of(self, batch: Batch, decoding: list[Request], slot_of: dict[int, int]) -> list[list[int]]:
        rows = [[r.id, slot_of[r.id], self.isl + r.generated - 1, 1, 1] for r in decoding[: batch.decode]]
        for c in batch.chunks:
            rows.append([c.request.id, slot_of[c.request.id], c.prior, c.tokens,
                         int(c.prior + c.tokens == self.isl)])
        return rows

    def _broadcast(self, rows: list[list[int]] | None) -> list[list[int]] | None:
        if self.rank == 0:
            self.buf.zero_()
            if rows is None:
                self.buf[0] = STOP
            else:
                self.buf[0] = len(rows)
                flat = [v for row in rows for v in row]
                self.buf[1: 1 + len(flat)] = torch.tensor(flat, dtype=torch.long)
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(self.buf, src=0)
        n = int(self.buf[0])
        if n == STOP:
            return None
        return self.buf[1: 1 + FIELDS * n].view(n, FIELDS).tolist()

    def _run(self, rows: list[list[int]]) -> None:
        segments = []
        for rid, slot, start, n, sample in rows:
            if start < self.isl:
                tokens = prompt_tokens(rid, self.isl, self.vocab, self.seed)[start: start + n]
            else:
                tokens = torch.tensor([self.last[rid]], dtype=torch.long)
            segments.append(Segment(slot=slot, start=start, tokens=tokens, sample=bool(sample)))
        out = self.forward.step(segments).tolist()
        sampled = [rid for rid, _, _, _, sample in rows if sample]
        for rid, tok in zip(sampled, out, strict=True):
            self.last[rid] = int(tok)
            if self.rank == 0:
                self.outputs.setdefault(rid, []).append(int(tok))
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def follow(self) -> None:
        """Ranks > 0: run whatever rank 0 broadcasts until it says stop."""
        while True:
            rows = self._broadcast(None)
            if rows is None:
                return
            self._run(rows)

    def drive(self, slots: int, *, users: int | None, arrivals: list[float] | None, num_requests: int,
              id_offset: int = 0, record: bool = True) -> list[Request]:
        """Rank 0: serve `num_requests` requests (closed loop of `users`, or the open `arrivals`)."""
        pool = self.doc.plan.pools[0]
        sched = Scheduler(self.isl, self.osl, pool.max_batch, pool.chunk_size, slots)
        free = deque(range(sched.slots))
        slot_of: dict[int, int] = {}
        requests: list[Request] = []
        pending = deque(arrivals or [])
        t0 = time.perf_counter()

        def new(arrival: float) -> None:
            r = Request(id=id_offset + len(requests), arrival=arrival, prefill_left=self.isl)
            requests.append(r)
            sched.add(r)

        if users is not None:
            for _ in range(min(users, num_requests)):
                new(0.0)
        done = 0
        while done < len(requests) or pending:
            now = time.perf_counter() - t0
            while pending and pending[0] <= now:
                new(pending.popleft())
            if sched.idle:
                if not pending:
                    break
                time.sleep(max(0.0, pending[0] - (time.perf_counter() - t0)))
                continue
            decoding = list(sched.decoding)
            batch = sched.plan()
            for c in batch.chunks:
                if c.prior == 0:
                    slot_of[c.request.id] = free.popleft()
            rows = self._segments_of(batch, decoding, slot_of)
            start = time.perf_counter()
            self._broadcast(rows)
            self._run(rows)
            end = time.perf_counter()
            sched.complete(batch, end - t0)
            if record:
                self.steps.append([batch.tokens, batch.sampled(self.isl), batch.decode, batch.decode_ctx,
                                   batch.prefill_tokens, batch.pairs(), end - start])
            for r in sched.finished:
                done += 1
                free.append(slot_of.pop(r.id))
                self.last.pop(r.id, None)
                if users is not None and len(requests) < num_requests:
                    new(end - t0)
            sched.finished = []
        return requests

    def stop(self) -> None:
        self._broadcast(None)

    def time_rows(self, rows: list[list[int]]) -> float:
        """Rank 0: run one step of the given segments on every rank; its seconds."""
        start = time.perf_counter()
        self._broadcast(rows)
        self._run(rows)
        return time.perf_counter() - start


def serve_and_measure(doc: ServeDocument, raw: dict[str, Any], rank: int, world: int, device: torch.device,
                      threads: int, seed: int) -> dict[str, Any] | None:
    pool, w = doc.plan.pools[0], doc.workload
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[doc.plan.dtype]
    model = build(doc.model, pool.tp, device, dtype, seed)
    slots = kv_slots(doc)
    cache = KVCache(model, slots, w.isl + w.osl, device, dtype)
    engine = Engine(doc, CachedForward(model, cache), rank, world, device, seed)
    if rank != 0:
        engine.follow()  # the warm-up
        engine.follow()  # the measured stream
        return None
    mode = w.mode
    users = w.concurrency if mode == "closed" else (slots if mode == "saturated" else None)
    n = w.num_requests or (3 * users + 8 if users else 40)
    arrivals = arrival_times(w.request_rate, n, w.arrivals, w.seed).tolist() if mode == "open" else None
    engine.drive(slots, users=min(ENGINE_WARMUP_REQUESTS, slots), arrivals=None, num_requests=ENGINE_WARMUP_REQUESTS,
                 id_offset=10**9, record=False)
    engine.stop()
    engine.outputs.clear()
    start = time.time()
    requests = engine.drive(slots, users=users, arrivals=arrivals, num_requests=n)
    engine.stop()
    wall = time.time() - start
    ids = measured_ids("open" if mode == "open" else "closed", n, users or 0)
    res = stream_result(requests, ids, w.osl, len(engine.steps), 0.0)
    from executor.measure import environment

    rss = _rss_bytes()
    tokens_per_s = res.output_tokens_per_s
    return {
        "schema_version": 1, "kind": "measured-serve", "status": "ok", "plan_hash": plan_hash(raw),
        "plan": doc.plan.describe(), "workload": w.to_dict(),
        "env": environment(device, "nccl" if device.type == "cuda" else "gloo", world, 1, threads),
        "ttft_ms": percentiles(res.ttft_s), "tpot_ms": percentiles(res.tpot_s), "e2e_ms": percentiles(res.e2e_s),
        "tokens_per_s": tokens_per_s, "tokens_per_s_per_gpu": tokens_per_s / pool.gpus,
        "requests_per_s": res.requests_per_s, "requests": len(requests), "measured_requests": res.measured,
        "kv_slots": slots, "kv_cache_bytes_per_rank": cache.nbytes, "wall_s": wall,
        "timeline": [[r.id, r.arrival, r.first_token, r.finish] for r in requests],
        "outputs": {str(k): v for k, v in sorted(engine.outputs.items())},
        "steps": {"columns": ["tokens", "sampled", "decode", "decode_ctx", "prefill_tokens", "prefill_pairs",
                              "seconds"], "rows": engine.steps},
        "memory": {"rss_bytes": rss},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _rss_bytes() -> int:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:  # pragma: no cover - platform without getrusage
        return 0


# ---- calibration microbenchmark -----------------------------------------------------------------

CALIB_LAYERS = (1, 5)
CALIB_BATCHES = (1, 8)
CALIB_CONTEXT = 32
# Token counts of the steps that time a new shape (first run minus a repeat), per calibration model:
# above any step the decode runs form (at most 2 x CALIB_CONTEXT tokens), each used once per process.
NEW_SHAPE_TOKENS = {1: (97, 113, 131), 5: (149, 167, 191)}


def calibration_spec(layers: int) -> ModelSpec:
    """A model whose ops cost almost nothing: its step times are the host's per-step, per-layer and
    per-sequence overheads (hidden 64, 4 heads, 2 KV heads, vocab 256)."""
    return ModelSpec(name=f"serve-calib-{layers}", num_layers=layers, hidden=64, num_heads=4, num_kv_heads=2,
                     ffn_hidden=128, vocab_size=256, seq_len=128, activation="swiglu", norm="rmsnorm",
                     position="rope", tied_embeddings=False, bias=False, dtype="fp32")


def calibrate(rank: int, world: int, device: torch.device, repeats: int) -> list[dict[str, Any]]:
    """Median decode step time of each calibration configuration (all ranks in lockstep)."""
    from planner.serve.plan import SLO, ServeDocument, ServePlan, ServePool, Workload
    from planner.specs.catalog import localhost_cpu

    rows = []
    for layers in CALIB_LAYERS:
        spec = calibration_spec(layers)
        for batch in CALIB_BATCHES:
            plan = ServePlan(pools=(ServePool(tp=world, max_batch=batch, chunk_size=max(batch, 64)),), dtype="fp32",
                             kv_dtype="fp32")
            doc = ServeDocument(plan=plan, model=spec, cluster=localhost_cpu(), slo=SLO(),
                                workload=Workload(isl=CALIB_CONTEXT, osl=repeats + 8, concurrency=batch))
            model = build(spec, world, device, torch.float32, 0)
            cache = KVCache(model, batch, CALIB_CONTEXT + repeats + 8, device, torch.float32)
            engine = Engine(doc, CachedForward(model, cache), rank, world, device, 0)
            if rank == 0:
                engine.drive(batch, users=batch, arrivals=None, num_requests=batch)
                engine.stop()
                decode = [s[-1] for s in engine.steps if s[4] == 0 and s[2] == batch]
                decode = decode[2:] or decode
                rows.append({"layers": layers, "batch": batch, "tp": world, "context": CALIB_CONTEXT,
                             "step_s": float(sorted(decode)[len(decode) // 2]), "steps": len(decode)})
            else:
                engine.follow()
        # A step at a token count this process has not run (DTensor propagates and caches each op's
        # sharding per input shape) against the same step repeated: once per count, on every rank.
        engine = Engine(doc, CachedForward(model, cache), rank, world, device, 0)
        if rank == 0:
            extra = []
            for i, tokens in enumerate(NEW_SHAPE_TOKENS[layers]):
                segments = [[i * 100 + j, j, 0, min(CALIB_CONTEXT, tokens - CALIB_CONTEXT * j), 0]
                            for j in range(-(-tokens // CALIB_CONTEXT))]
                segments[-1][4] = 1  # the last segment samples (the LM head at one row: a shape decode has run)
                first = engine.time_rows(segments)
                extra.append(first - engine.time_rows(segments))
            engine.stop()
            rows.append({"layers": layers, "tp": world, "new_shape_tokens": list(NEW_SHAPE_TOKENS[layers]),
                         "new_shape_s": float(sorted(extra)[len(extra) // 2])})
        else:
            engine.follow()
    return rows


# Forward GEMMs (inference mode) large enough to be compute bound: (m, k, n)
CALIB_GEMMS = ((128, 512, 512), (128, 512, 2048), (512, 512, 2048), (512, 2048, 512), (2048, 512, 2048),
               (2048, 2048, 2048))
CALIB_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # GEMM rows (tokens) of the row-count efficiency curve
# One-row GEMMs (a decode step's linear layers) by weight shape (out features, in features), each streaming
# GEMV_BYTES of distinct weights per sweep: the per-output-row cost and the bandwidth are fitted from them.
GEMV_SHAPES = ((128, 512), (512, 128), (512, 512), (1408, 512), (512, 1408), (1024, 1024), (4096, 512),
               (2048, 2048))
GEMV_BYTES = 128 << 20


def _median_time(fn: Any, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def bench_kernels(device: torch.device, repeats: int) -> dict[str, Any]:
    """Forward-only GEMM throughput (what a serving step's linear layers run, without autograd), the
    time of one-token GEMVs streaming weights that no cache holds (a decode step's weights) by weight
    shape (rows [out features, in features, bytes, seconds per call]: the bandwidth and the cost per
    weight row are fitted from them), and the decode attention kernel's time against 256-4096 cached
    keys (its FLOP rate is the slope)."""
    gemm = []
    for m, k, n in CALIB_GEMMS:
        x = torch.randn(m, k, device=device)
        w = torch.randn(n, k, device=device)
        sec = _median_time(lambda x=x, w=w: torch.nn.functional.linear(x, w), device, max(3, repeats // 4))
        gemm.append([m, k, n, 2.0 * m * k * n, sec])
    rows = []  # GEMMs by row count, weights streamed from 32 distinct 4 MB matrices (no cache reuse)
    weights = [torch.randn(1024, 1024, device=device) for _ in range(32)]
    for m in CALIB_ROWS:
        x = torch.randn(m, 1024, device=device)

        def sweep(x: torch.Tensor = x) -> None:
            for w in weights:
                torch.nn.functional.linear(x, w)

        sec = _median_time(sweep, device, max(3, repeats // 4)) / len(weights)
        rows.append([m, 1024, 1024, 2.0 * m * 1024 * 1024, sec])
    pool = torch.randn(GEMV_BYTES // 4, device=device)
    gemv = []
    for out_f, in_f in GEMV_SHAPES:
        ws = pool[: (pool.numel() // (out_f * in_f)) * out_f * in_f].view(-1, out_f, in_f)
        x = torch.randn(1, in_f, device=device)

        def sweep_gemv(ws: torch.Tensor = ws, x: torch.Tensor = x) -> None:
            for w in ws:
                torch.nn.functional.linear(x, w)

        per_call = _median_time(sweep_gemv, device, 5) / ws.shape[0]
        gemv.append([out_f, in_f, float(out_f * in_f * pool.element_size()), per_call])
    del pool
    # decode attention: one query per sequence against keys and values sliced from a cache (GQA)
    attention = []
    for heads, kv_heads, dim in ((16, 4, 64), (8, 8, 128)):
        cache = torch.randn(2, 2, kv_heads, 4096, dim, device=device)
        q = torch.randn(1, heads, 1, dim, device=device)
        gqa = heads != kv_heads
        for ctx in (256, 1024, 4096):
            def attend(cache: torch.Tensor = cache, q: torch.Tensor = q, ctx: int = ctx, gqa: bool = gqa) -> None:
                k, v = cache[0, 1, :, :ctx][None], cache[1, 1, :, :ctx][None]
                torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)

            sec_a = _median_time(attend, device, max(5, repeats))
            attention.append([heads, kv_heads, dim, ctx, 4.0 * heads * dim * ctx, sec_a])
    return {"gemm": gemm, "gemm_rows": rows, "gemv": gemv, "decode_attention": attention}


# ---- entry point --------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="executor.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", help="serving plan JSON written by `planner serve`")
    ap.add_argument("--out", required=True, help="measured.json (or calibration JSON) to write")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per rank (default 1 on CPU)")
    ap.add_argument("--timeout", type=float, default=600.0, help="collective timeout, seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibrate", action="store_true", help="time the calibration models instead")
    ap.add_argument("--repeats", type=int, default=24, help="--calibrate: decode steps per configuration")
    args = ap.parse_args(argv)
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    from executor.run import pick_device

    try:
        device, backend = pick_device(args.device, local_rank)
        doc = raw = None
        if not args.calibrate:
            if not args.plan:
                raise UnsupportedPlan("--plan is required (or --calibrate)", field="plan")
            doc = load_serve_plan(args.plan)
            check_executable(doc)
            raw = load_json(args.plan)
            raw = raw[0] if isinstance(raw, list) else raw
            if doc.plan.pools[0].tp != world:
                raise UnsupportedPlan(f"the plan serves with tp {doc.plan.pools[0].tp} but {world} ranks were "
                                      "started", field="world_size")
    except PlannerError as exc:
        if rank == 0:
            print(f"executor.serve: error: {exc}", file=sys.stderr)
        return 2
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else torch.get_num_threads())
    if device.type == "cpu" or args.threads is not None:
        torch.set_num_threads(threads)
    import torch.distributed as dist

    if world > 1:
        kwargs: dict[str, Any] = {"timeout": _dt.timedelta(seconds=args.timeout)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(backend, **kwargs)
    try:
        if args.calibrate:
            rows = calibrate(rank, world, device, args.repeats)
            kernels = bench_kernels(device, args.repeats) if world == 1 else None
            if rank == 0:
                atomic_write_json(args.out, {"kind": "serve-calibration", "world_size": world, "rows": rows,
                                             "kernels": kernels})
            if world > 1:
                dist.barrier()  # (as below: no rank tears the group down under a peer's collective)
            return 0
        assert doc is not None and raw is not None
        result = serve_and_measure(doc, raw, rank, world, device, threads, args.seed)
        if rank == 0 and result is not None:
            atomic_write_json(Path(args.out), result)
            print(f"executor.serve: wrote {args.out}", flush=True)
        if world > 1:
            # Every rank's last collectives complete before any rank tears the group down: a gloo rank
            # destroying its group while a peer's send to it is in flight aborted the process
            # ("terminate called without an active exception", about 1 run in 4 at tp 2 on this VM).
            dist.barrier()
        return 0
    except Exception as exc:
        print(f"executor.serve: rank {rank} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}",
              file=sys.stderr)
        if os.environ.get("PLANNER_DEBUG"):
            import traceback

            traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    exit_rank(main())
