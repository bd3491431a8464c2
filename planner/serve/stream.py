"""Step-level simulation of a request stream through serving engines: TTFT / TPOT distributions.

Why: under load, time to first token is mostly queueing (waiting for a batch slot, then for the
prompt's chunks to get through steps shared with decodes), which a no-load roofline cannot see
(Vidur, Agrawal et al. 2024, simulates at this level for the same reason). The simulation runs the
engine's own scheduler (planner/serve/scheduler.py) and advances time by the predicted step time
(planner/serve/step.py) of each batch it forms.

Load (`Workload.mode`):
- closed: `concurrency` users, each sending its next request when its last one finishes;
- open: requests at `request_rate` per second, Poisson (exponential gaps) or evenly spaced;
- saturated: a closed loop with every scheduler at its batch limit.
A deployment of `schedulers` identical schedulers (replicas x pipeline virtual engines x attention
groups) is simulated as one scheduler with its share of the load: 1/schedulers of the users, or a
Poisson stream of rate/schedulers (random routing splits a Poisson stream into Poisson streams).

Statistics leave out the start and the end: in a closed loop of K users, the first K requests (all
arriving at once) and the last K (while the loop drains); in an open stream, the first 10%.
Throughput is the output tokens produced in the window between the first measured arrival and the
last measured finish, per second (each request's tokens spread evenly between its first token and
its finish).

Disaggregated pools (DistServe, Zhong et al. 2024) are simulated one after the other: the prefill
pool (requests leave when their first token is sampled) with its share of the stream, then the decode
pool with Poisson arrivals at its share of the rate (the merged output of many prefill engines),
each request carrying its prefill-side first-token time, so its TPOT includes the KV transfer and the
wait for a decode slot. A closed loop of K users is found as the rate R whose mean end-to-end
latency E satisfies K = R x E (Little's law).

Queueing check (tests/test_serve.py): with one running request at a time, Poisson arrivals and
deterministic service the engine is an M/D/1 queue, whose mean wait is rho S / (2 (1 - rho))
(Pollaczek-Khinchine).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from planner.serve.scheduler import Request, Scheduler

WARMUP_FRACTION = 0.1  # open streams: requests left out of the statistics at the start
ENGINE_WARMUP_REQUESTS = 2  # the executor's engine serves these (a closed loop) before the measured stream


class Timer(Protocol):
    def __call__(self, tokens: int, seqs: int, decode_seqs: int, decode_ctx: float, prefill_tokens: int,
                 prefill_pairs: float, prefill_pairs_window: float | None = None) -> float: ...

    def decode_stretch(self, decode_seqs: int, decode_ctx: float, steps: int) -> np.ndarray: ...

    window: int | None


class NewShapeTimer:
    """`timer` plus `miss_s` on the first step at each token count: what a process pays once per new
    shape (DTensor caches each op's sharding by its input shapes). Stateful: one per simulated process,
    fed its steps in order, the engine's warm-up stream first."""

    def __init__(self, timer: Timer, miss_s: float) -> None:
        self.timer, self.miss_s, self.window = timer, miss_s, timer.window
        self.seen: set[int] = set()

    def _first(self, tokens: int) -> float:
        if tokens in self.seen:
            return 0.0
        self.seen.add(tokens)
        return self.miss_s

    def __call__(self, tokens: int, seqs: int, decode_seqs: int, decode_ctx: float, prefill_tokens: int,
                 prefill_pairs: float, prefill_pairs_window: float | None = None) -> float:
        return self.timer(tokens, seqs, decode_seqs, decode_ctx, prefill_tokens, prefill_pairs,
                          prefill_pairs_window) + self._first(tokens)

    def decode_stretch(self, decode_seqs: int, decode_ctx: float, steps: int) -> np.ndarray:
        times = np.array(self.timer.decode_stretch(decode_seqs, decode_ctx, steps), dtype=np.float64)
        if steps:
            times[0] += self._first(decode_seqs)
        return times


@dataclass
class StreamResult:
    """Per-request latencies of the measured requests of one simulated scheduler."""

    ttft_s: np.ndarray
    tpot_s: np.ndarray
    e2e_s: np.ndarray
    output_tokens_per_s: float  # of this scheduler, in the measurement window
    requests_per_s: float
    requests: int  # simulated in all
    measured: int
    steps: int
    mean_running: float  # time-averaged running sequences

    def summary(self) -> dict[str, Any]:
        return {"ttft_ms": percentiles(self.ttft_s), "tpot_ms": percentiles(self.tpot_s),
                "e2e_ms": percentiles(self.e2e_s)}


def percentiles(values_s: np.ndarray) -> dict[str, float]:
    """p50 / p90 / p99 and mean, in milliseconds (linear interpolation between order statistics)."""
    if values_s.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    ms = values_s * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean())}


def arrival_times(rate: float, n: int, kind: str, seed: int) -> np.ndarray:
    """`n` arrival times of a stream of `rate` per second: Poisson or evenly spaced."""
    if kind == "fixed":
        return np.arange(n, dtype=np.float64) / rate
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    return np.cumsum(gaps) - gaps[0]


def default_requests(mode: str, users: int) -> int:
    """Requests to simulate per scheduler: at least 200 measured ones (p99 from the two slowest)."""
    if mode == "open":
        return 250
    return 2 * users + max(users, 200)


def measured_ids(mode: str, n: int, users: int) -> range:
    """Ids of the requests the statistics cover (see the module docstring)."""
    if mode == "open":
        return range(int(n * WARMUP_FRACTION), n)
    if n - 2 * users >= 1:
        return range(users, n - users)
    return range(n)


def run_stream(timer: Timer, scheduler: Scheduler, *, users: int | None = None,
               arrivals: np.ndarray | None = None, num_requests: int, first_token_offset: float = 0.0,
               fast_forward: bool = True) -> tuple[list[Request], int, float]:
    """Drive `scheduler` with a closed loop of `users` or the open `arrivals`, `num_requests` in all.

    Returns (requests in id order, steps run, time-integral of running sequences). With
    `first_token_offset` > 0 (a disaggregated decode engine) each arriving request's first token
    was sampled that long before its arrival.
    """
    isl, window = scheduler.isl, timer.window
    requests: list[Request] = []
    pending: deque[float] = deque()
    if arrivals is not None:
        pending.extend(float(a) for a in arrivals[:num_requests])

    def new(arrival: float) -> Request:
        r = Request(id=len(requests), arrival=arrival, prefill_left=0 if scheduler.prefilled else isl)
        if scheduler.prefilled:
            r.prefilled, r.generated, r.first_token = isl, 1, arrival - first_token_offset
        requests.append(r)
        return r

    if users is not None:
        for _ in range(min(users, num_requests)):
            scheduler.add(new(0.0))
    t, steps, busy = 0.0, 0, 0.0
    done = 0
    while done < len(requests) or pending:
        while pending and pending[0] <= t:
            scheduler.add(new(pending.popleft()))
        if scheduler.idle:
            if not pending:
                break
            t = pending[0]
            continue
        batch = scheduler.plan()
        running = scheduler.running
        if fast_forward and not batch.chunks and batch.decode:
            k = scheduler.steps_to_next_finish()
            times = timer.decode_stretch(batch.decode, batch.decode_ctx, k)
            ends = t + np.cumsum(times)
            n = k
            if pending and running < scheduler.slots:  # an arrival that can start ends the stretch
                n = min(k, int(np.searchsorted(ends, pending[0])) + 1)
            scheduler.advance_decode(n, float(ends[n - 1]))
            busy += running * (float(ends[n - 1]) - t)
            t = float(ends[n - 1])
            steps += n
        else:
            dt = timer(batch.tokens, batch.sampled(isl), batch.decode, batch.decode_ctx, batch.prefill_tokens,
                       batch.pairs(), batch.pairs(window) if window is not None else None)
            busy += running * dt
            t += dt
            scheduler.complete(batch, t)
            steps += 1
        if scheduler.finished:
            for r in scheduler.finished:
                done += 1
                if users is not None and len(requests) < num_requests:
                    scheduler.add(new(r.finish))  # type: ignore[arg-type]
            scheduler.finished = []
    return requests, steps, busy


def stream_result(requests: list[Request], ids: range, osl: int, steps: int, busy: float) -> StreamResult:
    """Latency statistics and throughput of the measured requests `ids`."""
    rs = [requests[i] for i in ids if requests[i].finish is not None]
    arrival = np.array([r.arrival for r in rs])
    first = np.array([r.first_token for r in rs], dtype=np.float64)
    finish = np.array([r.finish for r in rs], dtype=np.float64)
    ttft = first - arrival
    tpot = (finish - first) / (osl - 1) if osl > 1 else np.zeros_like(ttft)
    e2e = finish - arrival
    if not rs:
        return StreamResult(ttft, tpot, e2e, 0.0, 0.0, len(requests), 0, steps, 0.0)
    start, end = float(arrival.min()), float(finish.max())
    span = max(end - start, 1e-12)
    all_first = np.array([r.first_token if r.first_token is not None else np.inf for r in requests])
    all_finish = np.array([r.finish if r.finish is not None else np.inf for r in requests])
    # tokens inside [start, end]: the first token at first_token, the other osl-1 evenly until finish
    firsts = ((all_first >= start) & (all_first <= end)).sum()
    length = np.maximum(all_finish - all_first, 1e-12)
    overlap = np.clip(np.minimum(all_finish, end) - np.maximum(all_first, start), 0.0, None)
    overlap = np.where(np.isfinite(overlap), overlap, 0.0)
    tokens = firsts + (osl - 1) * (overlap / length).sum() if osl > 1 else firsts
    total_time = float(all_finish[np.isfinite(all_finish)].max()) if np.isfinite(all_finish).any() else span
    return StreamResult(ttft_s=ttft, tpot_s=tpot, e2e_s=e2e, output_tokens_per_s=float(tokens) / span,
                        requests_per_s=len(rs) / span, requests=len(requests), measured=len(rs), steps=steps,
                        mean_running=busy / max(total_time, 1e-12))


def simulate_scheduler(timer: Timer, isl: int, osl: int, max_batch: int, chunk_size: int, kv_slots: int, *,
                       mode: str, users: int | None = None, rate: float | None = None, arrivals: str = "poisson",
                       num_requests: int | None = None, seed: int = 0, prefilled: bool = False,
                       first_token_offset: float = 0.0) -> StreamResult:
    """Simulate one scheduler under its share of the load (`users` for closed / saturated, `rate`
    requests per second for open)."""
    sched = Scheduler(isl, osl, max_batch, chunk_size, kv_slots, prefilled=prefilled)
    if mode == "saturated":
        mode, users = "closed", sched.slots
    if mode == "closed":
        k = max(1, int(users or 1))
        n = num_requests or default_requests("closed", k)
        reqs, steps, busy = run_stream(timer, sched, users=k, num_requests=n,
                                       first_token_offset=first_token_offset)
        return stream_result(reqs, measured_ids("closed", n, k), osl, steps, busy)
    assert rate is not None and rate > 0
    n = num_requests or default_requests("open", 0)
    times = arrival_times(rate, n, arrivals, seed)
    reqs, steps, busy = run_stream(timer, sched, arrivals=times, num_requests=n,
                                   first_token_offset=first_token_offset)
    return stream_result(reqs, measured_ids("open", n, 0), osl, steps, busy)


def combine_disaggregated(prefill: StreamResult, decode: StreamResult, osl: int) -> StreamResult:
    """TTFT from the prefill pool, TPOT (which includes the KV transfer) from the decode pool."""
    n = min(prefill.ttft_s.size, decode.tpot_s.size)
    ttft, tpot = prefill.ttft_s[:n], decode.tpot_s[:n]
    e2e = ttft + (osl - 1) * tpot
    return StreamResult(ttft_s=ttft, tpot_s=tpot, e2e_s=e2e, output_tokens_per_s=decode.output_tokens_per_s,
                        requests_per_s=decode.requests_per_s, requests=prefill.requests + decode.requests,
                        measured=n, steps=prefill.steps + decode.steps, mean_running=decode.mean_running)


def littles_law_rate(users: float, capacity: float, e2e_at: Any, iterations: int = 12) -> float:
    """The request rate R at which `users` concurrent users sustain R x E2E(R) = users (bisection
    in log space over (0, capacity); `e2e_at(R)` is the mean end-to-end latency at rate R)."""
    lo, hi = capacity * 1e-4, capacity * 0.999
    if users / max(e2e_at(lo), 1e-12) <= lo:
        return lo
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if mid * e2e_at(mid) < users:
            lo = mid
        else:
            hi = mid
    return lo
