"""Measured evidence: plan files, `measured.json` runs and `validation.json` reports gathered from
uploads or a folder, matched to their plans and set against the predictions.

The dashboard's Measured view is a table over these records; the rows themselves come from
`planner.compare.comparison_rows`, the one place predicted-vs-measured pairs are built.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.compare import ComparisonRow, comparison_rows, number_at
from planner.errors import PlannerError
from planner.io import load_json
from planner.plan import PlanDocument, document_from_json, plan_hash
from planner.uploads import MAX_UPLOAD_BYTES, read_json_bytes

MAX_SCAN_FILES = 500  # JSON files read when scanning a folder of measurements
SKIPPED_FOLDERS = ("node_modules", "__pycache__", "venv")


@dataclass
class Evidence:
    """Measured runs, plan documents and validation reports gathered from uploads or a folder."""

    measured: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    plans: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # plan_hash -> (source, JSON)
    validations: list[tuple[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # shown as errors (bad uploads, bad folder)
    skipped: list[str] = field(default_factory=list)  # other JSON files met while scanning a folder

    def add(self, obj: Any, source: str, scanning: bool = False) -> None:
        """Sort one parsed JSON file into measured runs, plans or validation reports."""
        unusable = self.skipped if scanning else self.problems
        if isinstance(obj, list) and obj and all(isinstance(d, dict) and d.get("kind") == "plan" for d in obj):
            for i, d in enumerate(obj):  # `planner plan --json` output
                self.plans.setdefault(plan_hash(d), (f"{source}[{i}]", d))
            return
        if not isinstance(obj, dict):
            unusable.append(f"{source}: expected a JSON object, got {type(obj).__name__}")
            return
        kind = obj.get("kind")
        if kind == "measured" or (kind is None and "plan_hash" in obj and "step_time_s" in obj):
            self.measured.append((source, obj))
        elif kind == "plan":
            self.plans.setdefault(plan_hash(obj), (source, obj))
        elif kind == "validation" or Path(source).name == "validation.json":
            self.validations.append((source, obj))
        else:
            unusable.append(f"{source}: not a plan, measured.json or validation.json (kind {str(kind)[:40]!r})")

    def add_bytes(self, data: bytes, name: str) -> None:
        """An uploaded file; a file that cannot be parsed becomes one line in `problems`."""
        try:
            self.add(read_json_bytes(data, name), name)
        except PlannerError as exc:
            self.problems.append(str(exc))


def scan_folder(folder: str, evidence: Evidence | None = None) -> Evidence:
    """Read the plan, measured.json and validation.json files under `folder` (bounded walk)."""
    ev = evidence or Evidence()
    try:
        root = Path(folder).expanduser()
        is_dir = root.is_dir()
    except (OSError, ValueError) as exc:
        ev.problems.append(f"{folder!r}: not a usable path ({exc})")
        return ev
    if not is_dir:
        ev.problems.append(f"{folder}: no such folder")
        return ev
    count = 0
    for path in _json_files(root):
        count += 1
        if count > MAX_SCAN_FILES:
            ev.problems.append(f"{root}: stopped after {MAX_SCAN_FILES} JSON files")
            break
        try:
            if path.stat().st_size > MAX_UPLOAD_BYTES:  # traces and data, never a plan or a result
                ev.skipped.append(f"{path}: larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
                continue
            ev.add(load_json(path), str(path), scanning=True)
        except OSError as exc:
            ev.skipped.append(f"{path}: {exc.strerror or exc}")
        except PlannerError as exc:
            ev.skipped.append(str(exc))
    if count == 0:
        ev.problems.append(f"{root}: no JSON files found")
    return ev


def _json_files(root: Path, depth: int = 4) -> Iterator[Path]:
    """JSON files under root, skipping hidden folders, links and virtual environments."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    for p in entries:
        if p.name.startswith(".") or p.is_symlink():
            continue
        if p.is_dir() and depth > 0 and p.name not in SKIPPED_FOLDERS:
            yield from _json_files(p, depth - 1)
        elif p.suffix == ".json" and p.is_file():
            yield p


@dataclass(frozen=True)
class RunComparison:
    """One measured run beside its prediction."""

    run: str  # the measured.json it came from
    plan: str  # the plan's description (or its hash / file when no plan file matched)
    status: str  # ok | failed | running
    prediction_from: str  # the plan file's name, "measured.json" (its copied prediction) or "none"
    rows: list[ComparisonRow]
    error: str | None = None  # the run's own error message when it failed

    def row(self, metric: str) -> ComparisonRow | None:
        return next((r for r in self.rows if r.metric == metric), None)


def compare_runs(ev: Evidence) -> list[RunComparison]:
    """Predicted vs measured for every measured run.

    The prediction comes from the matching plan file (by `plan_hash`; estimated if it holds none),
    else from the `predicted` block the executor copies into measured.json. A plan file that cannot
    be read adds a line to `ev.problems`.
    """
    out = []
    for source, m in ev.measured:
        label, pred, origin, doc = str(m.get("plan") or m.get("plan_hash") or source), None, "none", None
        match = ev.plans.get(str(m.get("plan_hash")))
        if match is not None:
            try:
                doc = document_from_json(match[1], match[0])
                pred = doc.prediction or _estimate(doc)
                label, origin = doc.plan.describe(), Path(match[0]).name
            except PlannerError as exc:
                ev.problems.append(str(exc))
                doc = None
        if pred is None and isinstance(m.get("predicted"), dict):
            pred, origin = m["predicted"], "measured.json"
        status = str(m.get("status", "?"))
        error = str(m.get("error", ""))[:300] if m.get("status") not in (None, "ok") else None
        out.append(RunComparison(run=source, plan=label, status=status, prediction_from=origin,
                                 rows=comparison_rows(doc, pred, m), error=error))
    return out


def _estimate(doc: PlanDocument) -> dict[str, Any]:
    from planner.cost import estimate

    return estimate(doc.model, doc.cluster, doc.plan)


@dataclass(frozen=True)
class ValidationPoint:
    """One plan of a `planner validate` report: predicted and measured step time (median over
    launches, and the fastest / slowest launch)."""

    name: str
    plan: str
    predicted_s: float | None
    measured_s: float | None
    launch_min_s: float | None
    launch_max_s: float | None
    error: float | None  # predicted / measured - 1
    predicted_memory_gib: float | None
    measured_memory_gib: float | None


@dataclass(frozen=True)
class ValidationSummary:
    """The headline numbers of a `planner validate` report (None where the report lacks them)."""

    n_plans: int | None
    mape: float | None  # fraction
    spearman: float | None
    worst: float | None  # fraction
    worst_plan: str | None
    pairs_separated: int | None
    pairs_misordered: int | None
    predicted_best: str | None
    predicted_best_in_measured_fastest_two: bool | None
    memory_mape: float | None
    model: str | None
    cluster: str | None
    ranks: int | None


def validation_summary(report: Any) -> ValidationSummary:
    """The summary block of a validation.json; the numbers are recomputed from the plans when the
    report has no summary (MAPE and worst error over plans with a measurement)."""
    obj = report if isinstance(report, dict) else {}
    s = obj.get("summary") if isinstance(obj.get("summary"), dict) else {}
    points = validation_points(report)
    errors = [p.error for p in points if p.error is not None]

    def num(key: str) -> float | None:
        v = number_at(s, key)
        return v if v is None or math.isfinite(v) else None

    def count(key: str) -> int | None:
        v = num(key)
        return None if v is None else int(v)

    def text(key: str) -> str | None:
        return None if s.get(key) is None else str(s.get(key))

    cluster = obj.get("cluster")
    best_two = s.get("predicted_best_in_measured_fastest_two")
    return ValidationSummary(
        n_plans=count("n_plans") if "n_plans" in s else len(errors),
        mape=num("mape") if "mape" in s else (sum(map(abs, errors)) / len(errors) if errors else None),
        spearman=num("spearman"),
        worst=num("worst") if "worst" in s else (max(map(abs, errors)) if errors else None),
        worst_plan=text("worst_plan"), pairs_separated=count("pairs_separated"),
        pairs_misordered=count("pairs_misordered"), predicted_best=text("predicted_best"),
        predicted_best_in_measured_fastest_two=best_two if isinstance(best_two, bool) else None,
        memory_mape=num("memory_mape"), model=None if obj.get("model") is None else str(obj.get("model")),
        cluster=str(cluster.get("name")) if isinstance(cluster, dict) and cluster.get("name") else None,
        ranks=int(obj["nproc_per_node"]) if isinstance(obj.get("nproc_per_node"), int) else None)


def validation_points(report: Any) -> list[ValidationPoint]:
    """Predicted vs measured step time per plan of a `planner validate` report."""
    out = []
    plans = report.get("plans") if isinstance(report, dict) else None
    for p in plans if isinstance(plans, list) else []:
        if not isinstance(p, dict):
            continue
        launches = [float(x) for x in p.get("launch_medians_s") or []
                    if isinstance(x, (int, float)) and not isinstance(x, bool)]
        pred, meas = number_at(p, "predicted_step_time_s"), number_at(p, "measured_step_time_s")
        out.append(ValidationPoint(
            name=str(p.get("name") or p.get("plan")), plan=str(p.get("plan") or ""),
            predicted_s=pred, measured_s=meas, launch_min_s=min(launches) if launches else None,
            launch_max_s=max(launches) if launches else None,
            error=pred / meas - 1 if pred is not None and meas else None,
            predicted_memory_gib=number_at(p, "predicted_memory_gib"),
            measured_memory_gib=number_at(p, "measured_memory_gib")))
    return out
