"""What every exporter shares: deviations from the plan, header lines, versions checked, GPU architecture.

Why: an export is only trustworthy if it says which framework release it was validated against and
where the framework cannot run the plan exactly; those rules are the same for every framework.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any

from planner.errors import PlannerError
from planner.plan import Plan, PlanDocument

# The releases each export was run through, with the framework's own code that checked it
# (tests/test_export.py for torchtitan and DeepSpeed; benchmarks/check_exports.sh for the rest).
CHECKED_WITH = {
    "megatron": "Megatron-Core 0.19.2 (PyPI megatron-core; megatron/training/arguments.py parse_args + "
                "validate_args, then parallel_state.initialize_model_parallel on a fake process group)",
    "megatron-bridge": "Megatron-Bridge 0.3.1 with Megatron-Core 0.16.1 (PyPI; the job's ConfigContainer.validate() at "
                       "the plan's world size, then parallel_state.initialize_model_parallel on a fake process "
                       "group)",
    "torchtitan": "torchtitan 0.3.0 with torch 2.13.0 (ConfigManager.parse_args on this module, then the "
                  "Trainer built on the fake communication backend at the plan's world size)",
    "deepspeed": "DeepSpeed 0.19.8 (deepspeed.runtime.config.DeepSpeedConfig with the plan's data-parallel "
                 "size, as Megatron-DeepSpeed's parallel state passes it)",
    "megatron-deepspeed": "Megatron-DeepSpeed main @ f4157be (megatron/arguments.py parse_args + validate_args, "
                          "parallel_state.initialize_model_parallel on a fake process group, then DeepSpeedConfig "
                          "with that parallel state) and DeepSpeed 0.19.8",
}

# Compute capability (major, minor) by GPU family: Megatron-LM's start-up checks depend on it
# (CUDA_DEVICE_MAX_CONNECTIONS=1 is required for TP/CP before Blackwell, arch < 10).
# Source: NVIDIA CUDA GPUs compute capability table (developer.nvidia.com/cuda-gpus).
_COMPUTE_CAPABILITY = (("A100", (8, 0)), ("H100", (9, 0)), ("H200", (9, 0)), ("B200", (10, 0)),
                       ("GB200", (10, 0)), ("B300", (10, 3)))


def compute_capability(gpu_name: str) -> tuple[int, int] | None:
    """The CUDA compute capability of a catalog GPU, or None (not an NVIDIA GPU / unknown)."""
    for prefix, cc in _COMPUTE_CAPABILITY:
        if gpu_name.upper().startswith(prefix):
            return cc
    return None


class ExportError(PlannerError, ValueError):
    """The plan cannot be expressed in the requested framework (CLI exit status 2)."""


@dataclass(frozen=True)
class Deviation:
    """One way the exported configuration differs from the plan, and the plan fields it changes."""

    feature: str
    message: str
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Build:
    """What an exporter collects while mapping a plan: deviations from it and notes for the user."""

    doc: PlanDocument
    framework: str
    deviations: list[Deviation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def deviate(self, feature: str, message: str, **changes: Any) -> None:
        self.deviations.append(Deviation(feature, message, changes))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def warnings(self, strict: bool) -> list[str]:
        """`WARNING:` lines for the deviations and the re-estimate; raise under `strict`."""
        if strict and self.deviations:
            what = "; ".join(f"{d.feature}: {d.message}" for d in self.deviations)
            raise ExportError(f"{self.framework} cannot run this plan exactly ({what}); "
                              f"drop --strict to export the closest configuration")
        lines = [f"WARNING: {d.feature}: {d.message}" for d in self.deviations]
        realised = realised_plan(self.doc.plan, self.deviations)
        if realised != self.doc.plan:
            lines.append(f"WARNING: this configuration runs {describe(realised)} instead of "
                         f"{describe(self.doc.plan)}; {estimate_line(self.doc, realised)}")
        return lines


def finetune_deviation(p: Plan, m: Any, b: Build) -> list[Any]:
    """A rule of the exporters' tables (it adds no setting): a LoRA plan trains adapters on frozen
    weights; an exporter that writes no adapters runs a job that trains every weight (each weight's
    gradient and optimizer state: far more memory), which is said, never silent."""
    if p.finetune == "lora":
        b.deviate("finetune", f"this {b.framework} export has no LoRA adapters: the job trains every weight "
                  "(full fine-tuning: gradients and optimizer states for all of them)", finetune="full")
    return []


def realised_plan(plan: Plan, deviations: list[Deviation]) -> Plan:
    """The plan a framework actually runs after its deviations (for re-estimating it)."""
    changes: dict[str, Any] = {}
    for d in deviations:
        changes.update(d.changes)
    return dataclasses.replace(plan, **changes) if changes else plan


def describe(plan: Plan) -> str:
    return f"{plan.describe()} {plan.schedule} {plan.dtype} [{','.join(plan.placement)}]"


def estimate_line(doc: PlanDocument, plan: Plan) -> str:
    """One sentence: the cost model's verdict on the configuration the framework will run."""
    from planner.cost import estimate

    try:
        pred = estimate(doc.model, doc.cluster, plan, check=False)
    except (PlannerError, ValueError, ZeroDivisionError) as exc:  # pragma: no cover - defensive
        return f"the planner cannot estimate it ({exc})"
    fits = "fits" if pred["fits"] else "DOES NOT FIT: expect out-of-memory"
    return (f"planner estimate: {pred['step_time_s']:.3g} s/step, {pred['mfu']:.1%} MFU, "
            f"{pred['memory_gib_per_gpu']:.1f} GiB/GPU of {pred['memory_limit_gib']:.1f} ({fits})")


def placement_order(plan: Plan, placement: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The rank order of the dimensions that exist (size > 1): only those place any group."""
    return tuple(d for d in (placement or plan.placement) if getattr(plan, d) > 1)


def header(doc: PlanDocument, checked: str, needs: list[str]) -> list[str]:
    """The comment lines every export starts with: plan, job, versions checked, what the user supplies."""
    p, m, c = doc.plan, doc.model, doc.cluster
    lines = [f"plan {doc.hash}: {p.describe()} (schedule {p.schedule}, recompute {p.recompute}, "
             f"zero {p.zero_stage}, {p.dtype}, ranks innermost first: {','.join(p.placement)})",
             f"model {m.name} on {c.num_gpus} x {c.gpu.name} ({c.num_nodes} node(s) x {c.gpus_per_node}), "
             f"global batch {p.global_batch} x seq {m.seq_len}, {p.grad_accum} micro-batches of "
             f"{p.micro_batch} per replica",
             f"checked with: {CHECKED_WITH[checked]}"]
    pred = doc.prediction
    if pred:
        lines.append(f"predicted: {pred['step_time_s']:.4g} s/step, {pred['mfu']:.1%} MFU, "
                     f"{pred['memory_gib_per_gpu']:.1f} GiB/GPU")
    lines += [f"you supply: {n}" for n in needs]
    return lines


def comment(lines: list[str], mark: str = "#") -> str:
    return "".join(f"{mark} {line}\n" if line else f"{mark}\n" for line in lines)


def args_text(items: list[tuple[str, Any]]) -> str:
    """One `--flag [value]` per line; a `None` value is a switch, a `#` entry a section comment."""
    out = []
    for flag, value in items:
        if flag == "#":
            out.append(f"# {value}")
        elif value is None:
            out.append(flag)
        else:
            out.append(f"{flag} {shlex.quote(str(value))}")
    return "\n".join(out) + "\n"


def parse_args_file(text: str) -> list[str]:
    """The argument words of an args file (comment lines dropped), as a shell would split them."""
    words: list[str] = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            words += shlex.split(line)
    return words
