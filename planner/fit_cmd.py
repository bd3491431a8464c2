"""`planner fit`: fit the GPU efficiencies to a table of measured runs and print cross-validated errors.

Reads tables in the columns of the shipped measured tables (planner/data/validation/measured-2026/; the
shipped ones by default), expresses every run it can (`planner.measured.express`), fits per GPU the
parameters of `planner.fit`, and prints: the fitted values beside the catalog's, the step-time error
before and after, and leave-one-source-out / leave-one-family-out errors (each group predicted by a fit
that never saw it). `--out` writes all of it as JSON; `--cluster P --profile-out F` writes preset P
with its GPU's fitted values as a cluster profile any `--cluster` accepts. `--fabrics` also fits each
cluster's collective efficiency per link tier, where enough runs wait on it, and `--overlaps` each
framework's overlap slowdown (`planner.fit`); `--framework F` fits on the runs of framework F alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from planner import fit
from planner.errors import PlannerError
from planner.framework import framework_names, framework_root, overlap_slowdowns
from planner.io import atomic_write_json
from planner.report import table

CV_KINDS = {"source": lambda r: r.source, "family": fit.model_family}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("fit", help="fit GPU efficiencies to measured runs; cross-validated errors",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("tables", nargs="*", help="CSV tables in the columns of a shipped measured table "
                   "(default: the shipped tables)")
    p.add_argument("--sources", help="comma-separated shipped sources to read when no table is given "
                   "(dgxc, torchtitan, bloom; default all)")
    p.add_argument("--gpu", action="append", help="fit only this GPU (repeatable; default every GPU with runs)")
    p.add_argument("--cv", default="source,family",
                   help="cross-validation: comma-separated groups to leave out in turn (source, family) or none")
    p.add_argument("--keep", action="append", default=[], metavar="GPU:PARAMETER",
                   help="keep the catalog's value of this parameter (one fitted to a published reference "
                   "elsewhere); what the runs alone give is still printed (repeatable)")
    p.add_argument("--from-assumptions", action="store_true",
                   help=f"start every GPU from the unfitted assumption (GEMMs, attention and low-precision GEMMs "
                   f"at {fit.ASSUMED_GEMM_EFFICIENCY} of peak; a power-limited part at its datasheet clock; every "
                   "framework at the cluster's overlap slowdown), not the catalog's values, except what --keep "
                   "names: needed for honest cross-validation when the catalog was fitted on these same runs")
    p.add_argument("--fabrics", action="store_true",
                   help="also fit each cluster's collective efficiency inside and across nodes (achieved bus "
                   "bandwidth / link bandwidth) on the runs whose step time depends on it by "
                   f"{fit.FABRIC_SENSITIVITY * 100:g}%% or more; slower (more cost-model calls per run)")
    p.add_argument("--overlaps", action="store_true",
                   help="also fit each framework's overlap slowdown (the fraction of an overlapped collective's "
                   "time by which it slows the compute beside it; a profile and its releases share one) on the "
                   f"runs whose step time depends on it by {fit.FABRIC_SENSITIVITY * 100:g}%% or more")
    p.add_argument("--framework", action="append", metavar="F",
                   help="fit on the runs of framework F (a profile, or a framework and every release that "
                   "extends it) alone (repeatable; default every run)")
    p.add_argument("--out", help="write the fit (values, errors, folds) as JSON")
    p.add_argument("--cluster", help="a cluster preset whose GPU gets the fitted values (with --profile-out)")
    p.add_argument("--profile-out", help="write --cluster with the fitted GPU values as a cluster profile JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def _check_output(path: str | None, what: str) -> None:
    """Refuse an output path that cannot be written, before any work."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise PlannerError(f"{path} is a directory", field=what)
    parent = p.parent if str(p.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not _writable(parent):
        raise PlannerError(f"cannot write {path} (directory {parent} is not writable)", field=what)


def _writable(d: Path) -> bool:
    import os

    return os.access(d, os.W_OK | os.X_OK)


def _runs(args: argparse.Namespace, pinned: list[tuple[str, str]]) -> list[Any]:
    from planner.measured import SOURCES, MeasuredRun, distinct, express_all, printed_runs, read_table

    if args.tables:
        printed = []
        for t in args.tables:
            try:
                printed += read_table(t)
            except ValueError as exc:
                raise PlannerError(str(exc), field="tables") from exc
    else:
        sources = tuple(s.strip() for s in (args.sources or ",".join(SOURCES)).split(",") if s.strip())
        try:
            printed = printed_runs(sources)
        except ValueError as exc:
            raise PlannerError(str(exc), field="sources") from exc
    once = distinct(printed)
    runs = [r for r in express_all(once.runs) if isinstance(r, MeasuredRun) and r.step_time_s]
    if args.gpu:
        runs = [r for r in runs if r.cluster.gpu.name in args.gpu]
    if args.framework:
        runs = [r for r in runs if {r.plan.framework, fit.run_framework(r)} & set(args.framework)]
    if args.from_assumptions:
        runs = [dataclasses.replace(r, cluster=dataclasses.replace(r.cluster, gpu=fit.unfitted(
            r.cluster.gpu, [n for g, n in pinned if g == r.cluster.gpu.name]))) for r in runs]
    if not runs:
        raise PlannerError("no expressible run with a measured step time in the input"
                           + (f" on GPU {', '.join(args.gpu)}" if args.gpu else "")
                           + (f" under framework {', '.join(args.framework)}" if args.framework else ""),
                           field="tables")
    if once.reprints and not args.quiet:
        print(f"{len(once.reprints)} row(s) reprint a run another row of the same source printed (same "
              "configuration and step time): counted once", file=sys.stderr)
    return runs


def _used(f: fit.Fitted, pinned: list[tuple[str, str]]) -> str:
    if f.adopted:
        return "fitted"
    if (f.gpu, f.name) in pinned:
        return "catalog (--keep)"
    return "catalog: fitted at the bound (the model misses something else on these runs)"


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _score_row(name: str, s: fit.Score) -> list[Any]:
    return [name, s.rows, f"{s.mape * 100:.1f}%", _pct(s.bias), _pct(s.worst)]


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(args: argparse.Namespace) -> int:
    cv = [c.strip() for c in args.cv.split(",") if c.strip() and c.strip() != "none"]
    bad = [c for c in cv if c not in CV_KINDS]
    if bad:
        raise PlannerError(f"unknown cross-validation group {bad[0]!r} (source, family or none)", field="cv")
    if bool(args.cluster) != bool(args.profile_out):
        raise PlannerError("--cluster and --profile-out go together", field="profile_out")
    base_cluster = None
    if args.cluster:
        from planner.specs.catalog import load_cluster

        base_cluster = load_cluster(args.cluster)
    pinned = []
    for k in args.keep:
        gpu_name, _, name = k.partition(":")
        if not name or not (name in fit.MEANINGS or name.startswith(fit.GEMM + "[")):
            raise PlannerError(f"--keep takes GPU:PARAMETER ({', '.join(fit.MEANINGS)} or {fit.GEMM}[fp8]), "
                               f"got {k!r}", field="keep")
        pinned.append((gpu_name, name))
    for name in args.framework or []:
        framework_root(name)  # an unknown name: one line naming the known ones
    _check_output(args.out, "out")
    _check_output(args.profile_out, "profile_out")
    progress = None if args.quiet else fit.stderr_progress
    start = time.perf_counter()
    runs = _runs(args, pinned)
    # From the assumptions, the frameworks' overlap slowdowns too: the cluster's (their catalog values
    # were fitted on these runs)
    reset = {framework_root(n): None for n in framework_names()} if args.from_assumptions else {}
    with overlap_slowdowns(reset):
        return _fit_and_report(args, cv, pinned, base_cluster, progress, start, runs)


def _fit_and_report(args: argparse.Namespace, cv: list[str], pinned: list[tuple[str, str]], base_cluster: Any,
                    progress: Any, start: float, runs: list[Any]) -> int:
    left_out = [r for r in runs if not fit.is_evidence(r)]
    runs = [r for r in runs if fit.is_evidence(r)]
    if not runs:
        raise PlannerError("no run in the input can inform the fit (every one runs a recipe priced by assumption)",
                           field="tables")
    gpus = {r.cluster.gpu.name: r.cluster.gpu for r in runs}
    if base_cluster is not None and base_cluster.gpu.name not in gpus:
        raise PlannerError(f"no run in the input on {base_cluster.gpu.name}, the GPU of {args.cluster}",
                           field="cluster")
    if progress:
        progress(f"{len(runs)} runs on {len(gpus)} GPU(s); tabulating step times on the efficiency grid")
    surfaces = fit.tabulate(runs, progress)
    if args.fabrics and progress:
        progress("fitting the GPU parameters, then each cluster's collective efficiency")
    fitted = fit.fit_all(surfaces, gpus, pinned, args.fabrics, progress, args.overlaps)
    measured = [float(r.step_time_s) for r in runs]
    before = fit.Score.of(fit.predict(runs, []), measured)
    after_pred = fit.predict(runs, fitted)
    after = fit.Score.of(after_pred, measured)

    print(f"Fitted on {len(runs)} measured runs ({', '.join(sorted({r.source for r in runs}))}); "
          f"mean |log(predicted / measured)| minimised per GPU"
          + (" and per cluster link tier" if args.fabrics else "")
          + f", each value within [{fit.GRID[0]}, {fit.GRID[-1]}]"
          + (f"; per framework its overlap slowdown within [{fit.OVERLAP_GRID[0]}, {fit.OVERLAP_GRID[-1]}]"
             if args.overlaps else "") + ":\n")
    if left_out:
        recipes = ", ".join(sorted({r.plan.dtype for r in left_out}))
        print(f"({len(left_out)} run(s) in {recipes} left out: their GEMM kernels are priced at another recipe's "
              "efficiency by assumption, so they cannot teach it)\n")
    print(table(["GPU", "parameter", "catalog", "fitted", "runs", "used"],
                [[f.gpu or "-", f.name, f"{f.before:.2f}" if f.before or fit.is_overlap(f.name) else "-",
                  f"{f.value:.2f}", f.rows, _used(f, pinned)]
                 for f in fitted], align="llrrrl"))
    print("\nStep-time error, in sample (predicted - measured) / measured:\n")
    print(table(["", "runs", "MAPE", "bias", "worst"],
                [_score_row("catalog values", before), _score_row("fitted values", after)], align="lrrrr"))
    by_gpu = []
    for g in sorted(gpus):
        idx = [i for i, r in enumerate(runs) if r.cluster.gpu.name == g]
        by_gpu.append(_score_row(g, fit.Score.of([after_pred[i] for i in idx], [measured[i] for i in idx])))
    print()
    print(table(["GPU (fitted)", "runs", "MAPE", "bias", "worst"], by_gpu, align="lrrrr"))
    folds_doc: dict[str, Any] = {}
    for kind in cv:
        if progress:
            progress(f"cross-validating: leave one {kind} out")
        folds, pooled = fit.cross_validate(surfaces, gpus, CV_KINDS[kind], progress, pinned, args.fabrics,
                                           args.overlaps)
        print(f"\nLeave one {kind} out (each predicted by a fit on the others):\n")
        print(table([f"held-out {kind}", "runs", "MAPE", "bias", "worst"],
                    [_score_row(f.group, f.score) for f in folds] + [_score_row("pooled", pooled)], align="lrrrr"))
        folds_doc[kind] = {"pooled": dataclasses.asdict(pooled),
                           "folds": [{"group": f.group, **dataclasses.asdict(f.score),
                                      "fitted": [dataclasses.asdict(x) for x in f.fitted]} for f in folds]}
    print(f"\n({time.perf_counter() - start:.0f} s; {dt.date.today().isoformat()}, commit {_commit()})")
    if args.out:
        doc = {"kind": "fit", "date": dt.date.today().isoformat(), "commit": _commit(),
               "command": "planner fit " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["fit"] else "planner fit",
               "runs": len(runs), "grid": list(fit.GRID), "objective": "mean |log(predicted / measured)|",
               "kept": [f"{g}:{n}" for g, n in pinned],
               "fitted": [{**dataclasses.asdict(f), "meaning": f.meaning, "at_bound": f.at_bound} for f in fitted],
               "in_sample": {"catalog": dataclasses.asdict(before), "fitted": dataclasses.asdict(after)},
               "cross_validation": folds_doc}
        atomic_write_json(args.out, doc)
        print(f"wrote {args.out}", file=sys.stderr)
    if base_cluster is not None:
        values = fit.values_by_gpu(fitted).get(base_cluster.gpu.name, {})
        values = {k: v for k, v in values.items()
                  if not fit.is_fabric(k) or fit.fabric_of(k)[0] == base_cluster.name}
        gpu = fit.with_values(base_cluster.gpu, values)
        note = (f" | fitted by planner fit on {len(runs)} measured runs ({dt.date.today().isoformat()}): "
                + ", ".join(f"{k} {v:.2f}" for k, v in values.items() if not fit.is_fabric(k)))
        gpu = dataclasses.replace(gpu, source=gpu.source + note)
        profile = fit.with_fabric(dataclasses.replace(base_cluster, gpu=gpu), values)
        for tier in fit.TIERS:  # say so in each link whose efficiency the fit set
            name = fit.fabric_parameter(base_cluster.name, tier)
            if name in values:
                link = getattr(profile, tier)
                profile = dataclasses.replace(profile, **{tier: dataclasses.replace(link, source=link.source + (
                    f" | efficiency {values[name]:.2f} fitted by planner fit --fabrics on {len(runs)} measured runs "
                    f"({dt.date.today().isoformat()})"))})
        here = {fit.run_framework(r) for r in runs if r.cluster.gpu.name == base_cluster.gpu.name}
        overlaps = {k: v for k, v in fit.values_by_framework(fitted).items() if k in here}  # frameworks run here
        if overlaps:
            profile = dataclasses.replace(profile, overlap_slowdown_by_framework=tuple(sorted(overlaps.items())))
        prof = profile.to_dict()
        fitted_here = {**values, **{fit.overlap_parameter(k): v for k, v in overlaps.items()}}
        prof["provenance"] = {**prof.get("provenance", {}),
                              "fit": {"values": fitted_here, "runs": len(runs), "commit": _commit()}}
        atomic_write_json(args.profile_out, prof)
        print(f"wrote {args.profile_out} ({args.cluster} with {len(values) + len(overlaps)} fitted value(s))",
              file=sys.stderr)
    return 0
