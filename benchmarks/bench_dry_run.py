"""How long a dry run of one rank takes at full size (`planner run PLAN --dry-run --ranks R`).

For each problem: the search's best plan the executor can build (cp = 1, even stages), then one rank built and
stepped in a fresh process on the fake process group (executor/dry_run.py), as the command does.
Prints the build and step times, the wall and CPU time of the rank's process (on a shared machine
the wall time grows with the load; the CPU time does not) and its peak memory, and whether the rank
agrees with the cost model.

    python benchmarks/bench_dry_run.py               # llama3-405b on 16,384 H100s, and two smaller jobs
    python benchmarks/bench_dry_run.py llama3-405b   # only the problems of these models
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from executor.dry_run import dry_run
from planner.dry_run_report import best_buildable_plan, compare
from planner.report import table
from planner.specs.catalog import load_cluster, load_model

EXECUTOR_RECOMPUTE = ("none", "selective", "full")  # what the executor implements
PROBLEMS = (  # model, cluster, GPUs, global batch, ranks to time ("last": the last rank)
    ("llama3-405b", "dgx-h100", 16384, 2048, (0, "last")),
    ("gpt3-175b", "dgx-a100-80gb", 4096, 1536, (0,)),
    ("llama3-70b", "dgx-h100", 512, 1024, (0,)),
)


def main() -> int:
    rows = []
    only = set(sys.argv[1:])
    for name, cluster_name, gpus, batch, ranks in PROBLEMS:
        if only and name not in only:
            continue
        model, cluster = load_model(name), load_cluster(cluster_name, gpus=gpus)
        doc, skipped = best_buildable_plan(model, cluster, batch, {"cp": 1, "recompute": EXECUTOR_RECOMPUTE})
        if skipped:
            print(f"{name}: skipped {len(skipped)} better plan(s) the executor cannot build, e.g. {skipped[0]}",
                  file=sys.stderr)
        for which in ranks:
            rank = gpus - 1 if which == "last" else which
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            (report,) = dry_run(doc, [rank])
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # the rank's process
            peak = after.ru_maxrss / 1024  # KiB -> MiB (Linux)
            agrees = compare(doc, report).ok
            rows.append([f"{name} / {gpus:,} x {cluster.gpu.name}", doc.plan.describe(), rank,
                         f"{report.build_s:.1f}", f"{report.step_s:.1f}", f"{wall:.1f}", f"{cpu:.1f}", f"{peak:,.0f}",
                         "yes" if agrees else "NO"])
            print(f"{name}: rank {rank} in {wall:.1f} s", file=sys.stderr, flush=True)
    print(table(["job", "plan (search's best, cp = 1)", "rank", "build s", "step s", "wall s", "CPU s",
                 "peak MiB (largest so far)", "agrees"], rows, align="llrrrrrrl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
