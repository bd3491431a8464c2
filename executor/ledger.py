"""measured.json as a run goes: nothing measured is lost when a rank (or the launcher's host) dies.

- Rank 0 rewrites measured.json atomically after every completed step (`"status": "running"`), so the
  file on disk always holds every step completed so far; at the end it says `"ok"`.
- A rank that catches a failure (rank 0) rewrites it as `"failed"` with the error, keeping the steps.
- If rank 0 itself is killed, the launcher (`planner run`) finds `"running"` and marks it `"failed"`
  (`mark_failed`); if no step completed, it writes a `"failed"` document with no steps.
- After a torchrun restart (`--max-restarts`), rank 0 adopts the earlier attempts' records of the same
  run (same `run_id`): steps before the resumed checkpoint are kept, steps after it are run again and
  their earlier measurements move to `discarded_steps`; so `losses` / `step_times_s` hold every
  completed step once, and nothing measured is dropped.

Torch-free: the launcher imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import PlannerError
from planner.io import atomic_write_json, load_json

SCHEMA_VERSION = 1
STATUSES = ("running", "ok", "failed")


def stats(times: list[float]) -> dict[str, float]:
    a = np.asarray(times, dtype=np.float64)
    return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90)), "mean": float(a.mean())}


def breakdown(times: list[float], busy: list[float]) -> dict[str, Any]:
    """Step time split into the busiest rank's host CPU time and the rest (waiting), medians over steps.

    On CPU ranks the host thread *is* the device: its CPU time is compute plus framework overhead, and
    the rest of the step it waits (for a peer's data, a collective, a pipeline bubble, or a core shared
    with another rank). The planner compares these with `compute + optimizer` and `bubble + exposed`.
    """
    wait = [max(t - b, 0.0) for t, b in zip(times, busy, strict=True)]
    return {"busy_s": float(np.median(busy)), "waiting_s": float(np.median(wait)),
            "method": "busy: CPU time of the busiest rank's training thread (time.thread_time) during the "
                      "step; waiting: step time minus busy"}


def read_run(path: str | Path, run_id: str) -> dict[str, Any] | None:
    """The measured.json at `path` if it belongs to run `run_id` (else None: absent, unreadable, or
    left by another run)."""
    p = Path(path)
    if not run_id or not p.is_file():
        return None
    try:
        d = load_json(p)
    except PlannerError:
        return None
    return d if isinstance(d, dict) and d.get("run_id") == run_id else None


def _numbers(value: Any) -> list[float]:
    ok = isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    return [float(x) for x in value] if ok else []


class Ledger:
    """Rank 0's record of the completed steps of one plan in one run (all attempts)."""

    def __init__(self, path: Path, header: dict[str, Any], warmup: int, tokens_per_step: int) -> None:
        self.path, self.header, self.warmup, self.tokens_per_step = Path(path), header, warmup, tokens_per_step
        self.losses: list[float] = []  # every completed step, warm-up included
        self.times: list[float] = []  # timed steps (index >= warmup), slowest rank
        self.busy: list[float] = []  # timed steps: the busiest rank's host CPU time (see executor.measure)
        self.restarts: list[dict[str, Any]] = []
        self.discarded: list[dict[str, Any]] = []

    @property
    def steps_completed(self) -> int:
        return len(self.losses)

    def resume(self, previous: dict[str, Any] | None, start_step: int, attempt: int) -> None:
        """Adopt an earlier attempt's records: keep steps < start_step (the checkpoint this attempt
        restored), move later ones to `discarded_steps` (they are run again)."""
        prev = previous or {}
        losses, times = _numbers(prev.get("losses")), _numbers(prev.get("step_times_s"))
        keep = min(start_step, len(losses))
        if keep < start_step:
            raise RuntimeError(f"the checkpoint is at step {start_step} but measured.json holds only "
                               f"{len(losses)} steps")
        old = [d for d in prev.get("discarded_steps", []) if isinstance(d, dict)]
        for i in range(keep, len(losses)):
            t = i - self.warmup
            old.append({"step": i, "loss": losses[i], "time_s": times[t] if 0 <= t < len(times) else None,
                        "attempt": attempt - 1})
        self.losses, self.times = losses[:keep], times[:max(0, keep - self.warmup)]
        busy = _numbers(prev.get("busy_times_s"))
        self.busy = busy[:len(self.times)] if len(busy) >= len(self.times) else []
        self.discarded = old
        self.restarts = [d for d in prev.get("restarts", []) if isinstance(d, dict)]
        status, error = prev.get("status"), prev.get("error")
        if status == "running":  # torchrun tore the attempt down (a rank died) before rank 0 could say why
            status, error = "failed", (f"attempt {attempt - 1} was stopped at step {len(losses)} before rank 0 "
                                       "recorded why (torchrun stops every rank when one fails)")
        self.restarts.append({"attempt": attempt, "resumed_from_step": start_step,
                              "previous_status": status, "previous_error": error})

    def record(self, loss: float, seconds: float, persist: bool = True, busy: float | None = None) -> None:
        """One completed step (loss averaged over the ranks that compute it, time of the slowest rank,
        the busiest rank's host CPU time when measured)."""
        step = len(self.losses)
        self.losses.append(float(loss))
        if step >= self.warmup:
            if busy is not None and len(self.busy) == len(self.times):
                self.busy.append(float(busy))
            self.times.append(float(seconds))
        if persist:
            self.flush()

    def document(self, status: str = "running", error: str | None = None) -> dict[str, Any]:
        d = dict(self.header)
        d["status"] = status
        if error is not None:
            d["error"] = error
        d["steps_completed"] = len(self.losses)
        d["step_times_s"] = list(self.times)
        d["losses"] = list(self.losses)
        if self.times:
            s = stats(self.times)
            d["step_time_s"] = s
            d["tokens_per_s"] = self.tokens_per_step / s["median"]
        if self.busy and len(self.busy) == len(self.times):
            d["busy_times_s"] = list(self.busy)
            d["time_breakdown"] = breakdown(self.times, self.busy)
        if self.restarts:
            d["restarts"] = self.restarts
        if self.discarded:
            d["discarded_steps"] = self.discarded
        return d

    def flush(self, status: str = "running", error: str | None = None, **extra: Any) -> dict[str, Any]:
        doc = {**self.document(status, error), **extra}
        atomic_write_json(self.path, doc)
        return doc


def mark_failed(path: str | Path, run_id: str, error: str, header: dict[str, Any]) -> dict[str, Any]:
    """The launcher's last word on a failed launch: measured.json says `"failed"` and keeps every step
    rank 0 persisted; written from `header` (no steps) when rank 0 persisted nothing. A plan that
    finished (`"ok"`) is left alone."""
    doc = read_run(path, run_id)
    if doc is not None and doc.get("status") == "ok":
        return doc  # this plan finished; the launch failed later (e.g. on the next plan of the launch)
    if doc is None:
        doc = {**header, "run_id": run_id, "status": "failed", "error": error, "steps_completed": 0,
               "step_times_s": [], "losses": []}
    elif doc.get("status") != "failed":
        doc["status"] = "failed"
        doc["error"] = error
    else:  # rank 0 said why; add what only the launcher saw (e.g. which rank was killed by a signal)
        doc.setdefault("error", error)
        news = [part for part in error.split("; ") if part not in str(doc["error"])]
        if news:
            doc["launcher_error"] = "; ".join(news)
    atomic_write_json(path, doc)
    return doc
