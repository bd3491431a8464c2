"""Search speed and memory on the standard problems (a table; run: python benchmarks/bench_search.py).

Each problem runs in a fresh process so its peak RSS is its own. Reported: plans in the legal space,
plans scored by the vectorised cost model, wall and CPU seconds, plans per CPU-second (the machine
is shared, so CPU time is the steadier figure), and peak memory. For scale: Calculon (Isaiah et al.,
SC'23), run on this machine kind for gpt3-175b on 4096 A100s at batch 1536, scored 99,148 executions
in 8 minutes, about 208 plans/s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time

PROBLEMS = [
    # (label, model, cluster, gpus, global batch, seq len)
    ("gpt3-175b / 1024 A100-80GB", "gpt3-175b", "dgx-a100-80gb", 1024, 1536, None),
    ("megatron-1t / 3072 A100-80GB", "megatron-1t", "dgx-a100-80gb", 3072, 3072, None),
    ("llama3-405b / 16384 H100 (seq 8192)", "llama3-405b", "dgx-h100", 16384, 2048, 8192),
    ("mixtral-8x7b / 256 H100", "mixtral-8x7b", "dgx-h100", 256, 1024, None),
    ("gpt3-175b / 4096 A100-80GB (Calculon's problem)", "gpt3-175b", "dgx-a100-80gb", 4096, 1536, None),
]
CALCULON_PLANS_PER_S = 99_148 / (8 * 60)


def _one(args: tuple, queue: mp.Queue) -> None:
    label, model_name, cluster_name, gpus, batch, seq = args
    from planner.search import search
    from planner.specs.catalog import load_cluster, load_model

    model = load_model(model_name, seq_len=seq)
    cluster = load_cluster(cluster_name, gpus=gpus)
    wall, cpu = time.perf_counter(), time.process_time()
    result = search(model, cluster, batch, top_k=10)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    best = result.plans[0].describe()
    queue.put({"problem": label, "space": result.space, "scored": result.scored, "fitting": result.fitting,
               "wall_s": wall, "cpu_s": cpu, "plans_per_cpu_s": result.scored / cpu,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "best": best, "best_step_s": result.predictions[0]["step_time_s"]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", help="substring of a problem label")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for prob in PROBLEMS:
        if args.only and args.only not in prob[0]:
            continue
        q: mp.Queue = ctx.Queue()
        p = ctx.Process(target=_one, args=(prob, q))
        p.start()
        rows.append(q.get())
        p.join()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        return
    head = f"{'problem':48s} {'space':>10s} {'scored':>10s} {'wall s':>7s} {'CPU s':>7s} {'plans/CPU-s':>12s} " \
           f"{'peak MiB':>9s}  best plan"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['problem']:48s} {r['space']:>10,} {r['scored']:>10,} {r['wall_s']:>7.2f} {r['cpu_s']:>7.2f} "
              f"{r['plans_per_cpu_s']:>12,.0f} {r['peak_rss_mib']:>9.0f}  {r['best']} ({r['best_step_s']:.2f} s)")
    calc = [r for r in rows if "Calculon" in r["problem"]]
    if calc:
        ratio = calc[0]["plans_per_cpu_s"] / CALCULON_PLANS_PER_S
        print(f"\nvs Calculon on the same problem (~{CALCULON_PLANS_PER_S:.0f} plans/s): {ratio:,.0f}x faster")


if __name__ == "__main__":
    main()
