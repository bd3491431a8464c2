"""Plan codes: the short names the dashboard shows, links carry and the legend explains.

A code is `Plan.describe()` plus the rank placement when it is not the default, e.g.
`tp4 pp4 dp16 cp2 v4 mb1 sp z1 [tp>dp>cp>pp]`. Within one search (one dtype, attention kernel and
global batch) it names one plan; `parse_plan_code` reads it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from planner.errors import PlanError
from planner.plan import DEFAULT_PLACEMENT, DIMS, RECOMPUTE, Plan

LEGEND = (
    ("tp4", "tensor parallel: each layer's matrices split over 4 GPUs"),
    ("pp4", "pipeline parallel: the layers in 4 stages"),
    ("dp16", "data parallel: 16 replicas, each on a share of the batch"),
    ("cp2", "context parallel: each sequence split over 2 GPUs"),
    ("ep8", "expert parallel: mixture-of-experts experts spread over 8 GPUs"),
    ("v4", "4 virtual stages per pipeline GPU (interleaved 1F1B schedule)"),
    ("mb1", "micro-batch of 1 sequence"),
    ("sp", "sequence parallelism (norms and dropout split along the sequence, with tp)"),
    ("rc-selective / rc-full", "activation recomputation: attention core only / whole layers"),
    ("z1 / z2 / z3", "ZeRO stage: optimizer states / + gradients / + weights sharded over dp"),
    ("gpipe", "GPipe schedule (all forwards, then all backwards); else 1F1B"),
    ("[tp>dp>cp>pp]", "rank placement, innermost (fastest links) first; omitted for tp>cp>dp>pp"),
)

_TOKEN = re.compile(r"^(tp|pp|dp|cp|ep|v|mb)([1-9][0-9]{0,9})$")


def plan_code(plan: Plan) -> str:
    """`Plan.describe()` plus the placement when it is not the default order."""
    note = "" if plan.placement == DEFAULT_PLACEMENT else " [" + ">".join(plan.placement) + "]"
    return plan.describe() + note


@dataclass(frozen=True)
class PlanCode:
    """The knobs a plan code names (everything but the global batch, dtype and attention kernel)."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    ep: int = 1
    vpp: int = 1
    micro_batch: int = 1
    sequence_parallel: bool = False
    recompute: str = "none"
    zero_stage: int = 0
    gpipe: bool = False
    placement: tuple[str, ...] = DEFAULT_PLACEMENT

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    def plan(self, global_batch: int, dtype: str, flash_attention: bool = True) -> Plan:
        """The plan this code names, for a global batch and dtype (PlanError if it cannot be one)."""
        schedule = "gpipe" if self.gpipe else ("interleaved-1f1b" if self.vpp > 1 else "1f1b")
        return Plan(tp=self.tp, pp=self.pp, dp=self.dp, cp=self.cp, ep=self.ep, vpp=self.vpp,
                    micro_batch=self.micro_batch, global_batch=global_batch, schedule=schedule,
                    recompute=self.recompute, sequence_parallel=self.sequence_parallel,
                    zero_stage=self.zero_stage, dtype=dtype, placement=self.placement,
                    flash_attention=flash_attention)


def parse_plan_code(code: str) -> PlanCode:
    """Read a plan code back; PlanError naming the first word it does not understand."""
    text = " ".join(str(code).split())
    if len(text) > 200:
        raise PlanError("plan code is longer than any plan's", field="plan")
    placement = DEFAULT_PLACEMENT
    m = re.search(r"\s*\[([a-z>]+)\]$", text)
    if m:
        dims = tuple(m.group(1).split(">"))
        if sorted(dims) != sorted(DIMS):
            raise PlanError(f"placement [{m.group(1)}] is not an ordering of {', '.join(DIMS)}", field="plan")
        placement, text = dims, text[:m.start()]
    sizes = {"tp": 1, "pp": 1, "dp": 1, "cp": 1, "ep": 1, "v": 1, "mb": 1}
    seen: set[str] = set()
    sp = gpipe = False
    recompute, zero = "none", 0
    for word in text.split(" ") if text else []:
        t = _TOKEN.match(word)
        if t and t.group(1) not in seen:
            seen.add(t.group(1))
            sizes[t.group(1)] = int(t.group(2))
        elif word == "sp" and not sp:
            sp = True
        elif word == "gpipe" and not gpipe:
            gpipe = True
        elif word.startswith("rc-") and word[3:] in RECOMPUTE[1:] and recompute == "none":
            recompute = word[3:]
        elif word in ("z1", "z2", "z3") and zero == 0:
            zero = int(word[1])
        else:
            raise PlanError(f"{word[:30]!r} is not part of a plan code (see the legend)", field="plan")
    if not {"tp", "pp", "dp"} <= seen:
        raise PlanError("a plan code names tp, pp and dp (e.g. tp4 pp2 dp8 mb1)", field="plan")
    return PlanCode(tp=sizes["tp"], pp=sizes["pp"], dp=sizes["dp"], cp=sizes["cp"], ep=sizes["ep"], vpp=sizes["v"],
                    micro_batch=sizes["mb"], sequence_parallel=sp, recompute=recompute, zero_stage=zero,
                    gpipe=gpipe, placement=placement)
