"""Search speed end to end: `planner plan` as a user runs it, and Calculon's search on the same problems.

    python benchmarks/bench_search.py [--calculon DIR] [--no-calculon] [--only TEXT] [--json | --markdown]
                                      [--save FILE] [--from-json FILE]

Per problem, ours:
- whole process: `planner plan ...` launched as a subprocess (Python start-up, imports, search,
  simulation re-ranking of the top plans, printing), median of --launches launches: wall seconds,
  CPU seconds (user + system, from wait4) and peak RSS;
- the search and re-ranking times the CLI prints on stderr ("searched N plans in X s ...; re-ranked
  the best K by simulation in Y s");
- scoring only: `planner.search.search(..., rerank=0)` in a fresh process: plans scored, CPU seconds,
  plans per CPU-second (the machine is shared, so CPU time is the steadier figure);
- the best plan the CLI chose (its --out file) and its step time.

Calculon (Isaev et al., SC'23; github.com/calculon-ai/calculon, Apache-2.0) is optional and external:
give its checkout with --calculon DIR (or $CALCULON_DIR, or ../calculon beside this repository).
Its `llm-optimal-execution` search runs once per problem in the same run, on the same model and
GPU count, with the options that keep its search space to the dimensions both tools share (see
CALCULON_FLAGS and `no_offload_system`); the table gives how many times faster ours is, measured here:
time to an answer (whole process, wall and CPU: Calculon / ours) and plans evaluated per CPU-second
(ours / Calculon). Nothing of
Calculon's is copied here: this script only calls its command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # in-process imports (search only, reading plans) use this checkout's planner


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: our preset names, and Calculon's input files when it can express it."""

    label: str
    model: str
    cluster: str
    gpus: int
    global_batch: int
    seq_len: int | None = None
    calculon_model: str | None = None  # path inside a Calculon checkout
    calculon_system: str | None = None


A100 = "systems/a100_80g.json"  # Calculon's A100-80GB system: NVLink 300 GB/s x 8, then 25 GB/s per GPU
PROBLEMS = [
    Problem("gpt3-175b / 1024 A100-80GB, batch 1536", "gpt3-175b", "dgx-a100-80gb", 1024, 1536,
            calculon_model="models/gpt3-175B.json", calculon_system=A100),
    Problem("megatron-1t / 3072 A100-80GB, batch 3072", "megatron-1t", "dgx-a100-80gb", 3072, 3072,
            calculon_model="models/megatron-1T.json", calculon_system=A100),
    # Calculon models neither grouped-query attention nor mixture-of-experts: ours only.
    Problem("llama3-405b / 16384 H100, batch 2048 x 8192", "llama3-405b", "dgx-h100", 16384, 2048, seq_len=8192),
    Problem("mixtral-8x7b / 256 H100, batch 1024", "mixtral-8x7b", "dgx-h100", 256, 1024),
    Problem("gpt3-175b / 4096 A100-80GB, batch 1536", "gpt3-175b", "dgx-a100-80gb", 4096, 1536,
            calculon_model="models/gpt3-175B.json", calculon_system=A100),
    # Calculon's README example (its turing-530B.json is megatron-530b's shape). 5128 = 8 x 641 GPUs:
    # no data-parallel degree divides batch 2520, so ours finds no plan; Calculon shrinks the batch
    # to the largest multiple of its data-parallel degree, a different problem (see the caveats).
    Problem("megatron-530b / 5128 A100-80GB, batch 2520", "megatron-530b", "dgx-a100-80gb", 5128, 2520,
            calculon_model="models/turing-530B.json", calculon_system=A100),
]

# Calculon options that bound its search to what both tools search. -m (used by its README's
# example) ends its micro-batch loop at the first size where no execution is valid (over memory,
# or a network assignment that cannot work); memory grows with the micro-batch, so it skips only
# executions that would fail too. --no-tp-overlap drops its tensor-parallel communication overlap
# modes (ring, pipe), which ours does not search.
CALCULON_FLAGS = ("-m", "--no-tp-overlap")
SEARCH_LINE = re.compile(r"searched ([\d,]+) plans in ([\d.]+) s \(([\d,]+) plans/s\)(?:; ([\d,]+) fit)?")
RERANK_LINE = re.compile(r"re-ranked the best (\d+) by simulation in ([\d.]+) s")
HOW_TO_GET_CALCULON = (
    "Calculon not found: for the side-by-side run, git clone https://github.com/calculon-ai/calculon ../calculon && "
    "python -m venv ../calculon/.venv && ../calculon/.venv/bin/pip install numpy pandas psutil, then rerun with "
    "--calculon ../calculon")


# ---- running a command and measuring it ------------------------------------------------------


@dataclass
class Launch:
    """One finished (or killed) process: exit code, wall and CPU seconds, peak RSS, its output."""

    returncode: int | None  # None: killed at the timeout
    wall_s: float
    cpu_s: float  # user + system of the process and every child it waited for
    peak_rss_mib: float  # the largest single process among them
    stdout: str
    stderr: str


def launch(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float | None = None) -> Launch:
    """Run cmd; wait4 gives its CPU time and peak RSS (including children it reaped, e.g. a pool)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        result: list = []
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            result.append((time.perf_counter() - start, status, usage))

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        waiter.join(timeout_s)
        killed = waiter.is_alive()
        if killed:  # the whole session we started: the command and its workers
            cpu_so_far = session_cpu_s(proc.pid)  # its workers are killed unreaped: wait4 would not count them
            os.killpg(proc.pid, 9)
            waiter.join()
        wall, status, usage = result[0]
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        cpu = cpu_so_far if killed else usage.ru_utime + usage.ru_stime
        return Launch(None if killed else proc.returncode, wall, cpu, usage.ru_maxrss / 1024,
                      out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def session_cpu_s(sid: int) -> float:
    """CPU seconds used so far by the live processes of session sid (and the children they reaped), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == sid:  # fields from the state on: state ppid pgrp session ... utime stime cutime cstime
            total += sum(int(x) for x in fields[11:15])
    return total / tick


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


# ---- ours -------------------------------------------------------------------------------------


def planner_command() -> tuple[list[str], dict[str, str]]:
    """`planner` as installed if it is this checkout's; else `python -m planner.cli` from this checkout."""
    env = dict(os.environ)
    script = Path(sys.executable).parent / "planner"
    spec = importlib.util.find_spec("planner")
    installed_here = spec is not None and spec.origin is not None and Path(spec.origin).resolve().is_relative_to(REPO)
    if script.exists() and installed_here:
        return [str(script)], env
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return [sys.executable, "-m", "planner.cli"], env


def plan_args(p: Problem) -> list[str]:
    args = ["plan", "--model", p.model, "--cluster", p.cluster, "--gpus", str(p.gpus),
            "--global-batch", str(p.global_batch)]
    return args + (["--seq-len", str(p.seq_len)] if p.seq_len else [])


def best_from_plan_file(path: Path) -> tuple[str, float | None]:
    """The plan written by `planner plan --out`: its short description and step time (simulated if re-ranked)."""
    try:
        from planner.plan import load_plan

        doc = load_plan(path)
        sim = doc.extra.get("simulation") or {}
        step = sim.get("step_time_s", (doc.prediction or {}).get("step_time_s"))
        return doc.plan.describe(), step
    except Exception as exc:  # the plan file is the CLI's; report rather than stop the benchmark
        try:
            raw = json.loads(path.read_text())
            short = " ".join(f"{k}{raw[k]}" for k in ("tp", "pp", "dp", "cp", "vpp") if k in raw)
        except (OSError, ValueError):
            short = "?"
        return f"{short} (planner.plan.load_plan refused the CLI's plan file: {exc})", None


def run_ours(p: Problem, launches: int, workdir: Path) -> dict:
    cmd, env = planner_command()
    out = workdir / f"plan-{abs(hash(p.label))}.json"
    full = [*cmd, *plan_args(p), "--out", str(out)]
    runs = [launch(full, REPO, env) for _ in range(launches)]
    row: dict = {"command": " ".join(["planner", *plan_args(p)]),
                 "whole_wall_s": statistics.median(r.wall_s for r in runs),
                 "whole_cpu_s": statistics.median(r.cpu_s for r in runs),
                 "whole_wall_s_all": [round(r.wall_s, 3) for r in runs],
                 "peak_rss_mib": max(r.peak_rss_mib for r in runs), "returncode": runs[-1].returncode}
    m = SEARCH_LINE.search(runs[-1].stderr)
    if m:
        row.update(space=int(m[1].replace(",", "")), cli_search_s=float(m[2]),
                   cli_plans_per_s=int(m[3].replace(",", "")))
    m = RERANK_LINE.search(runs[-1].stderr)
    if m:
        row.update(reranked=int(m[1]), cli_rerank_s=float(m[2]))
    if runs[-1].returncode == 0 and out.exists():
        row["best"], row["best_step_s"] = best_from_plan_file(out)
    else:
        row["best"], row["best_step_s"] = f"no plan (exit {runs[-1].returncode}: {last_line(runs[-1].stderr)})", None
    return row


def _search_only(p: Problem, queue: mp.Queue) -> None:
    try:
        from planner.search import search
        from planner.specs.catalog import load_cluster, load_model

        model = load_model(p.model, seq_len=p.seq_len)
        cluster = load_cluster(p.cluster, gpus=p.gpus)
        wall, cpu = time.perf_counter(), time.process_time()
        result = search(model, cluster, p.global_batch, top_k=10, rerank=0)  # scoring alone
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        queue.put({"space": result.space, "scored": result.scored, "fitting": result.fitting,
                   "search_wall_s": wall, "search_cpu_s": cpu, "search_plans_per_cpu_s": result.scored / cpu,
                   "search_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    except Exception as exc:  # e.g. no plan fits: the whole-process row says why
        queue.put({"search_error": f"{type(exc).__name__}: {exc}"})


def run_search_only(p: Problem) -> dict:
    """planner.search.search alone, in a fresh process so its peak RSS is its own."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_search_only, args=(p, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row


# ---- Calculon ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calculon:
    """A Calculon checkout and the Python that runs it."""

    root: Path
    python: str
    commit: str


def find_calculon(given: str | None) -> tuple[Calculon | None, str]:
    """The checkout from --calculon, $CALCULON_DIR or ../calculon; None and why when there is none."""
    candidates = [given] if given else [os.environ.get("CALCULON_DIR"), str(REPO.parent / "calculon")]
    for cand in filter(None, candidates):
        root = Path(cand).expanduser().resolve()
        if (root / "bin" / "calculon").is_file() and (root / "calculon" / "llm").is_dir():
            break
    else:
        return None, f"--calculon {given}: not a Calculon checkout (no bin/calculon)" if given else HOW_TO_GET_CALCULON
    venv = root / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else sys.executable
    check = subprocess.run([python, "-c", "import calculon"], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                           capture_output=True, text=True)
    if check.returncode:
        return None, (f"Calculon at {root} does not import with {python} ({last_line(check.stderr)}): "
                      f"pip install numpy pandas psutil into {root}/.venv")
    git = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return Calculon(root, python, git.stdout.strip() or "unknown"), ""


def no_offload_system(calc: Calculon, system: str, workdir: Path) -> Path:
    """Calculon's system file with its second memory tier (host DRAM, used for offloading) set to 0 GiB.

    Calculon then does not search weight, activation and optimizer offloading, which ours does not
    model; every other number of the system is Calculon's own.
    """
    doc = json.loads((calc.root / system).read_text())
    doc["mem2"]["GiB"] = 0
    path = workdir / f"calculon-{Path(system).stem}-no-offload.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def describe_execution(exe: dict) -> str:
    """Calculon's execution in our plan notation (rs_ag = sequence parallel; optimizer sharding = ZeRO-1)."""
    parts = [f"tp{exe['tensor_par']}", f"pp{exe['pipeline_par']}", f"dp{exe['data_par']}"]
    if exe["pipeline_interleaving"] > 1:
        parts.append(f"v{exe['pipeline_interleaving']}")
    parts.append(f"mb{exe['microbatch_size']}")
    if exe["tensor_par_comm_type"] == "rs_ag":
        parts.append("sp")
    elif exe["tensor_par_comm_type"] == "p2p_rs_ag":
        parts.append("p2p-rs-ag")
    rc = {"none": None, "attn_only": "rc-selective", "full": "rc-full"}[exe["activation_recompute"]]
    parts += [x for x in (rc, "z1" if exe["optimizer_sharding"] else None) if x]
    if exe.get("data_par_overlap") is False and exe["data_par"] > 1:
        parts.append("no-dp-overlap")
    return " ".join(parts)


def run_calculon(calc: Calculon, p: Problem, cpus: int, timeout_s: float, workdir: Path) -> dict:
    system = no_offload_system(calc, p.calculon_system, workdir)
    out = workdir / f"calculon-{abs(hash(p.label))}.json"
    args = ["llm-optimal-execution", p.calculon_model, str(p.gpus), str(p.global_batch), "float16", str(system),
            str(out), *CALCULON_FLAGS, "-c", str(cpus)]
    shown = ["llm-optimal-execution", p.calculon_model, str(p.gpus), str(p.global_batch), "float16",
             f"{p.calculon_system}(mem2 0 GiB)", "out.json", *CALCULON_FLAGS, "-c", str(cpus)]
    r = launch([calc.python, "bin/calculon", *args], calc.root, {**os.environ, "PYTHONPATH": str(calc.root)},
               timeout_s)
    row: dict = {"calculon_command": "PYTHONPATH=. ./bin/calculon " + " ".join(shown),
                 "calculon_wall_s": r.wall_s, "calculon_cpu_s": r.cpu_s, "calculon_returncode": r.returncode}
    if r.returncode is None:
        row["calculon_best"] = f"timed out after {timeout_s:.0f} s"
        return row
    for key, name in (("calculon_executions", "Total executions"), ("calculon_good", "Good executions")):
        m = re.search(rf"{name}: (\d+)", r.stdout)
        if m:
            row[key] = int(m[1])
    if "calculon_executions" in row and r.cpu_s > 0:
        row["calculon_per_cpu_s"] = row["calculon_executions"] / r.cpu_s
    if r.returncode == 0 and out.exists():
        best = json.loads(out.read_text())["0"]
        exe, stats = best["execution"], best["stats"]
        row["calculon_best"] = describe_execution(exe)
        row["calculon_best_step_s"] = stats["total_time"]
        row["calculon_batch"] = exe["batch_size"]
    else:
        row["calculon_best"] = f"no execution (exit {r.returncode}: {last_line(r.stdout + r.stderr)})"
    return row


def add_ratios(row: dict) -> None:
    """Calculon / ours, from this run's numbers (>1: ours is faster), when both ran to an answer.

    An answer is a best plan, or "no plan fits" (ours exits 2, Calculon 255) after a complete search.
    When Calculon hit the timeout, its time so far gives lower bounds on the time ratios.
    """
    if row.get("returncode") not in (0, 2) or "calculon_wall_s" not in row:
        return
    timed_out = row["calculon_returncode"] is None
    if not timed_out and row["calculon_returncode"] not in (0, 255):
        return
    row["ratio_wall"] = row["calculon_wall_s"] / row["whole_wall_s"]
    row["ratio_cpu"] = row["calculon_cpu_s"] / row["whole_cpu_s"]
    row["ratios_are_lower_bounds"] = timed_out
    if "scored" in row and "calculon_per_cpu_s" in row:
        row["ratio_plans_per_cpu_s"] = row["scored"] / row["whole_cpu_s"] / row["calculon_per_cpu_s"]


# ---- output -------------------------------------------------------------------------------------


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def ours_table(rows: list[dict]) -> list[list[str]]:
    head = ["problem", "plans scored", "search s", "re-rank s", "whole s", "whole CPU s", "plans / CPU-s (whole)",
            "plans / CPU-s (scoring)", "peak MiB", "best plan (step s)"]
    body = []
    for r in rows:
        whole_rate = r["scored"] / r["whole_cpu_s"] if "scored" in r and r.get("returncode") == 0 else None
        step = f" ({r['best_step_s']:.2f} s)" if r.get("best_step_s") else ""
        body.append([r["problem"], _num(r.get("scored"), ",d"), _num(r.get("cli_search_s"), ".2f"),
                     _num(r.get("cli_rerank_s"), ".2f"), _num(r["whole_wall_s"], ".2f"),
                     _num(r["whole_cpu_s"], ".2f"), _num(whole_rate, ",.0f"),
                     _num(r.get("search_plans_per_cpu_s"), ",.0f"), _num(r["peak_rss_mib"], ".0f"),
                     f"{r['best']}{step}"])
    return [head, *body]


def calculon_table(rows: list[dict]) -> list[list[str]]:
    head = ["problem", "ours: whole s / CPU s", "Calculon: executions", "Calculon: s / CPU s",
            "Calculon: exec / CPU-s", "time to answer (wall)", "CPU to answer", "plans / CPU-s",
            "Calculon's best (step s)"]
    body = []
    for r in rows:
        if "calculon_wall_s" not in r:
            continue
        step = f" ({r['calculon_best_step_s']:.2f} s" if r.get("calculon_best_step_s") else ""
        if step and r.get("calculon_batch") != r["global_batch"]:
            step += f", batch {r['calculon_batch']}"
        body.append([r["problem"], f"{r['whole_wall_s']:.2f} / {r['whole_cpu_s']:.2f}",
                     _num(r.get("calculon_executions"), ",d"),
                     f"{r['calculon_wall_s']:.1f} / {r['calculon_cpu_s']:.1f}",
                     _num(r.get("calculon_per_cpu_s"), ",.0f"),
                     *(("-" if r.get(k) is None else f"{'>' if r.get('ratios_are_lower_bounds') else ''}"
                        f"{r[k]:,.0f}x") for k in ("ratio_wall", "ratio_cpu", "ratio_plans_per_cpu_s")),
                     f"{r['calculon_best']}{step + ')' if step else ''}"])
    return [head, *body] if body else []


# Issue 16's targets: whole `planner plan` process (s) on two problems; re-ranking under 10% of the search
# on every problem; peak memory under 1 GiB.
WHOLE_TARGETS = {"megatron-1t / 3072 A100-80GB, batch 3072": 1.5, "gpt3-175b / 4096 A100-80GB, batch 1536": 2.5}


def target_lines(rows: list[dict]) -> list[str]:
    """One line per target: the measured value beside the bound, and whether it is met."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out = []
    for r in rows:
        bound = WHOLE_TARGETS.get(r["problem"])
        if bound is not None and r.get("returncode") == 0:
            out.append(f"- {r['problem']}: whole process {r['whole_wall_s']:.2f} s (<= {bound} s): "
                       f"{verdict(r['whole_wall_s'] <= bound)}")
    shares = [(r["problem"], r["cli_rerank_s"] / r["cli_search_s"]) for r in rows
              if r.get("cli_rerank_s") is not None and r.get("cli_search_s")]
    if shares:
        worst = max(shares, key=lambda x: x[1])
        out.append(f"- re-ranking the top 32 by simulation, largest share of its search: {worst[1]:.1%} "
                   f"({worst[0]}; < 10%): {verdict(worst[1] < 0.10)}")
    peak = max((r["peak_rss_mib"] for r in rows), default=None)
    if peak is not None:
        out.append(f"- peak memory of any launch: {peak:.0f} MiB (< 1 GiB): {verdict(peak < 1024)}")
    return out


def render(table: list[list[str]], md: bool) -> str:
    if not table:
        return ""
    right = [i for i in range(1, len(table[0]) - 1)]
    if md:
        sep = ["---" if i not in right else "---:" for i in range(len(table[0]))]
        return "\n".join("| " + " | ".join(r) + " |" for r in [table[0], sep, *table[1:]])
    width = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.rjust(width[i]) if i in right else c.ljust(width[i]) for i, c in enumerate(r)).rstrip()
             for r in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def print_tables(meta: dict, rows: list[dict], md: bool) -> None:
    load = str(meta["load_before"][0]) + (f" -> {meta['load_after'][0]}" if "load_after" in meta else "")
    print(f"{meta['date']}, {meta['cpus']} CPUs, Python {meta['python']}, load average {load}; "
          f"ours: `planner plan` (median of {meta['launches']} launches) and scoring only")
    print(render(ours_table(rows), md))
    lines = target_lines(rows)
    if lines:
        print("\nIssue 16's targets (search and re-rank times as the CLI prints them, to 0.01 s):")
        print("\n".join(lines))
    calc = meta.get("calculon")
    if not calc:  # one line: why there is no side-by-side table
        print("\n" + meta.get("calculon_missing", "Calculon: skipped (--no-calculon)"))
        return
    table = calculon_table(rows)
    if not table:
        return
    print(f"\nSide by side with Calculon @ {calc['commit']} ({' '.join(calc['flags'])}, mem2 0 GiB, "
          f"{calc['cpus']} workers), one launch each; ratios = how many times faster ours is:")
    print(render(table, md))
    for r in rows:
        if "calculon_command" in r:
            print(f"  {r['calculon_command']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calculon", metavar="DIR", help="Calculon checkout (default: $CALCULON_DIR or ../calculon)")
    ap.add_argument("--no-calculon", action="store_true", help="ours only")
    ap.add_argument("--calculon-cpus", type=int, default=len(os.sched_getaffinity(0)),
                    help="Calculon worker processes (default: the CPUs this process may use)")
    ap.add_argument("--calculon-timeout", type=float, default=10800, help="seconds per Calculon search (default 10800)")
    ap.add_argument("--launches", type=int, default=3, help="launches of `planner plan` per problem (median)")
    ap.add_argument("--only", help="problems whose label contains this text")
    ap.add_argument("--save", metavar="FILE", help="also write the --json document here, after every problem")
    ap.add_argument("--from-json", metavar="FILE", help="print the tables of a saved --json run (measures nothing)")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the rows as JSON")
    out.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")
    args = ap.parse_args(argv)
    if args.from_json:
        try:
            saved = json.loads(Path(args.from_json).read_text())
            meta, rows = saved["meta"], saved["rows"]
        except (OSError, ValueError, KeyError) as exc:
            print(f"bench_search: --from-json {args.from_json}: not a saved run ({exc})", file=sys.stderr)
            return 2
        print_tables(meta, rows, args.markdown)
        return 0
    problems = [p for p in PROBLEMS if not args.only or args.only in p.label]
    if not problems:
        print(f"bench_search: no problem label contains {args.only!r}", file=sys.stderr)
        return 2

    if args.save and not Path(args.save).resolve().parent.is_dir():
        print(f"bench_search: --save {args.save}: its folder does not exist", file=sys.stderr)
        return 2
    calc, why = (None, "") if args.no_calculon else find_calculon(args.calculon)
    if args.calculon and calc is None:
        print(f"bench_search: {why}", file=sys.stderr)
        return 2
    meta = {"date": date.today().isoformat(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "launches": args.launches,
            "load_before": [round(x, 2) for x in os.getloadavg()], "planner": " ".join(planner_command()[0]),
            "calculon": None if calc is None else {"root": str(calc.root), "commit": calc.commit,
                                                   "python": calc.python, "flags": list(CALCULON_FLAGS),
                                                   "cpus": args.calculon_cpus}}
    if calc is None:
        meta["calculon_missing"] = why or "Calculon: skipped (--no-calculon)"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in problems:
            print(f"[{p.label}] ours ...", file=sys.stderr, flush=True)
            row: dict = {"problem": p.label, **asdict(p)}
            row.update(run_search_only(p))
            row.update(run_ours(p, args.launches, Path(tmp)))
            if calc is not None and p.calculon_model:
                print(f"[{p.label}] Calculon ...", file=sys.stderr, flush=True)
                row.update(run_calculon(calc, p, args.calculon_cpus, args.calculon_timeout, Path(tmp)))
                add_ratios(row)
            rows.append(row)
            if args.save:  # a long run keeps what it measured so far
                save = Path(args.save)
                part = save.with_name(save.name + ".part")
                part.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
                part.replace(save)
    meta["load_after"] = [round(x, 2) for x in os.getloadavg()]

    if args.json:
        json.dump({"meta": meta, "rows": rows}, sys.stdout, indent=2)
        print()
        return 0
    print_tables(meta, rows, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
