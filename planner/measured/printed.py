"""`PrintedRun`: one published measurement as its source printed it, normalised but not yet a plan.

The three source readers (`dgxc`, `torchtitan`, `bloom`) fill it from a CSV row; `express` turns it into
planner objects. Keeping the two steps apart lets the tests check what a row *says* (hand-read from the
source) independently of which planner features exist today.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from importlib import resources

DATA_DIR = ("validation", "measured-2026")

# Recompute policies as the frameworks name them. Megatron's names map to the planner's directly;
# JAX remat policies are kept by name (the planner has no equivalent yet).
RECOMPUTE_POLICIES = ("none", "selective", "full", "op-selective", "every-k")


@dataclass(frozen=True)
class PrintedRun:
    """A measured training run: configuration and measurement, as printed (plus the stated assumptions).

    `model` is a catalog preset name or a key of `planner.measured.models.MODELS`; `system` a key of
    `planner.measured.systems.SYSTEMS`. Sizes are the degrees the framework ran with; `dp` is derived
    from the GPU count (the printed DP column is not always right, see `notes`).
    """

    source: str  # dgxc | torchtitan | bloom (the CSV it came from)
    row: int  # 0-based data row of that CSV
    label: str  # short description for tables
    framework: str  # nemo | maxtext | paxml | torchtitan | megatron-deepspeed
    model: str
    system: str
    num_gpus: int
    seq_len: int
    global_batch: int
    micro_batch: int
    num_layers: int | None = None  # a proxy's layer count; None: the model's own
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    etp: int | None = None  # expert tensor-parallel size when printed
    vpp: int = 1
    fsdp: int = 0  # FSDP sharding group size (ZeRO-3); 0: none
    zero_stage: int = 0
    sequence_parallel: bool = False
    schedule: str = "1f1b"
    first_stage_layers: int | None = None  # uneven pipelines (per pipeline rank)
    last_stage_layers: int | None = None
    uneven_virtual: bool = False  # the framework counts embedding / loss as layers of virtual stages
    precision: str = "bf16"  # bf16 | fp16 | fp8 | fp8-rowwise | mxfp8 | nvfp4
    recompute: str = "none"  # one of RECOMPUTE_POLICIES, or "remat:<JAX policy>", or "" (not printed)
    recompute_every: int = 1
    finetune: str = "pretrain"  # pretrain | sft | lora
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ()
    flash_attention: bool = True
    # fine-tuning on packed samples: each row packs whole samples of about this many tokens, and
    # attention stays within a sample (0: one sequence per row)
    packed_sample_tokens: int = 0
    refinements: tuple[str, ...] = ()  # what the framework did that only a framework profile can price
    profile: str = ""  # the planner's framework profile of the printed settings ("": the framework's own)
    step_time_s: float | None = None  # measured seconds per step (None: not printed)
    step_time_how: str = ""  # how step_time_s follows from the printed numbers
    memory_gib: float | None = None  # measured memory per GPU, on `memory_definition`
    memory_definition: str = ""
    oom: bool = False  # the source reports the run ran out of memory
    source_blockers: tuple[str, ...] = ()  # reasons the source leaves the run undefined
    notes: tuple[str, ...] = field(default=())  # assumptions and corrections made reading the row

    @property
    def dp(self) -> int:
        return self.num_gpus // max(1, self.tp * self.pp * self.cp)


def read_csv(name: str) -> list[dict[str, str]]:
    """Rows of one shipped CSV (planner/data/validation/measured-2026/NAME)."""
    text = resources.files("planner.data").joinpath(*DATA_DIR, name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def int_or(value: str | None, default: int) -> int:
    """An integer cell; blank, NA, n/a or None give `default`."""
    v = (value or "").strip()
    if not v or v.lower() in ("na", "n/a", "none", "null", "-"):
        return default
    return int(float(v))


def number(value: str | None) -> float | None:
    """A numeric cell with thousands separators; None when blank or not a number ("x", "OOM")."""
    v = (value or "").strip().replace(",", "")
    m = re.fullmatch(r"[-+]?\d+(?:\.\d+)?", v)
    return float(m.group(0)) if m else None
