"""Wall and CPU time of `planner serve`'s search on standard serving problems (issue 15's target: a 70B
serving space on 64 GPUs searched in under 1 s). Each problem runs in a fresh process, so imports and
caches are paid as a user pays them; the search itself is timed (the CLI adds ~0.3 s of imports).

    python benchmarks/bench_serve.py
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBLEMS = [
    ("llama3-70b / 64 H100, isl 1024 osl 256, saturated", "llama3-70b", "dgx-h100", 64, {}),
    ("llama3-70b / 64 H100, SLO TTFT 1 s TPOT 50 ms", "llama3-70b", "dgx-h100", 64,
     {"slo": {"ttft_ms": 1000, "tpot_ms": 50}}),
    ("llama3-70b / 64 H100, 256 users", "llama3-70b", "dgx-h100", 64, {"concurrency": 256}),
    ("llama3-70b / 64 H100, 20 req/s", "llama3-70b", "dgx-h100", 64, {"request_rate": 20.0}),
    ("llama3-70b / 16 H100, disaggregated, 8 req/s", "llama3-70b", "dgx-h100", 16,
     {"request_rate": 8.0, "disaggregated": True}),
    ("mixtral-8x7b / 64 H100, saturated", "mixtral-8x7b", "dgx-h100", 64, {}),
]

CHILD = """
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
from planner.serve.plan import SLO, Workload
from planner.serve.search import search_serving
from planner.specs.catalog import load_cluster, load_model
model, cluster, gpus, opts = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
m, c = load_model(model), load_cluster(cluster, gpus=gpus)
w = Workload(1024, 256, concurrency=opts.get("concurrency"), request_rate=opts.get("request_rate"))
t1, c1 = time.perf_counter(), time.process_time()
r = search_serving(m, c, w, SLO(**opts.get("slo", {})), disaggregated=opts.get("disaggregated", False))
best = r.documents[0].prediction
print(json.dumps({"space": r.space, "simulated": r.simulated, "wall": time.perf_counter() - t1,
                  "cpu": time.process_time() - c1, "best": r.documents[0].plan.describe(),
                  "tok_gpu": best["tokens_per_s_per_gpu"]}))
"""


def main() -> int:
    rows = []
    for label, model, cluster, gpus, opts in PROBLEMS:
        out = subprocess.run([sys.executable, "-c", CHILD, model, cluster, str(gpus), json.dumps(opts)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out)
        rows.append((label, r))
    print("| problem | plans screened | simulated | search wall s | search CPU s | best plan | tok/s/GPU |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for label, r in rows:
        print(f"| {label} | {r['space']:,} | {r['simulated']} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['best']} | "
              f"{r['tok_gpu']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
