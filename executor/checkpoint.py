"""Checkpoints with `torch.distributed.checkpoint` (DCP), so a restarted run resumes where it stopped.

Layout: `<root>/step_00000004/` holds DCP's files for the state after 4 completed steps (every rank's
model and optimizer shards: DDP / FSDP2 / tensor-parallel DTensors / pipeline stages, through
`get_state_dict` / `set_state_dict`), plus `signature.json`, written by rank 0 last.

Loading never trusts the directory: DCP reads its `.metadata` with pickle and non-tensor entries with
`torch.load(weights_only=False)`, so a checkpoint is loaded only when `signature.json` carries a valid
HMAC-SHA256, keyed by a secret the launcher passes to the ranks in the environment (never written to
disk), over the SHA-256 of every file in the step directory. A directory whose save was interrupted
(no signature) or altered is skipped. `latest()` is decided by rank 0 and broadcast as a tensor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from executor.errors import UnsupportedPlan
from planner.errors import PlannerError
from planner.io import atomic_write_json, load_json

KEY_ENV = "PLANNER_CHECKPOINT_KEY"
SIGNATURE = "signature.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def check_checkpointable(plan: Any) -> None:
    """Layouts whose state DCP cannot save faithfully (raise UnsupportedPlan before any launch)."""
    if plan.ep > 1:
        raise UnsupportedPlan("--checkpoint-every with expert parallelism is not supported yet (expert "
                              "weights share names across ep ranks)", field="checkpoint_every")


def checkpoint_key(run_id: str) -> bytes:
    """The HMAC key: the launcher's secret, or (torchrun started by hand) the run id."""
    secret = os.environ.get(KEY_ENV) or run_id
    if not secret:
        raise UnsupportedPlan("checkpointing needs --run-id or PLANNER_CHECKPOINT_KEY", field="checkpoint_every")
    return hashlib.sha256(secret.encode()).digest()


def _digest_files(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name == SIGNATURE or (p.name.startswith(".") and p.name != ".metadata"):
            continue
        if p.is_file():
            h = hashlib.sha256()
            with p.open("rb") as fh:
                for chunk in iter(lambda f=fh: f.read(1 << 20), b""):
                    h.update(chunk)
            out[p.name] = h.hexdigest()
    return out


def _mac(key: bytes, files: dict[str, str], step: int) -> str:
    text = json.dumps({"step": step, "files": files}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def sign(folder: Path, step: int, key: bytes) -> None:
    files = _digest_files(folder)
    atomic_write_json(folder / SIGNATURE, {"step": step, "files": files, "hmac": _mac(key, files, step)})


def verified(folder: Path, step: int, key: bytes) -> bool:
    """True when `folder` holds exactly the files its signature lists, unaltered."""
    try:
        sig = load_json(folder / SIGNATURE)
    except PlannerError:
        return False
    if not isinstance(sig, dict) or sig.get("step") != step or not isinstance(sig.get("files"), dict):
        return False
    files = _digest_files(folder)
    return files == sig["files"] and ".metadata" in files and hmac.compare_digest(
        str(sig.get("hmac", "")), _mac(key, files, step))


class Checkpointer:
    """Saves every `every` steps and restores the latest verified checkpoint (collective calls)."""

    def __init__(self, root: Path, every: int, key: bytes, modules: list[nn.Module],
                 optimizers: list[torch.optim.Optimizer], rank: int, world: int) -> None:
        self.root, self.every, self.key = Path(root), every, key
        self.model = nn.ModuleList(modules)  # one FQN space for this rank's model parts
        self.optimizers = [getattr(o, "optim", o) for o in optimizers]  # ZeRO-1: this rank's shard
        self.rank, self.world = rank, world

    def folder(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def _options(self) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        # Optimizer entries keyed by parameter name (not by group index): pipeline stages and ZeRO-1
        # shards hold different parameters, and DCP keeps one copy of each non-tensor key.
        return StateDictOptions(flatten_optimizer_state_dict=True)

    def _state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizers, options=self._options())
        return {"model": model_sd, "optim": optim_sd}

    def due(self, steps_done: int) -> bool:
        return self.every > 0 and steps_done % self.every == 0

    def save(self, steps_done: int) -> None:
        import torch.distributed.checkpoint as dcp

        folder = self.folder(steps_done)
        dcp.save(self._state(), checkpoint_id=str(folder))
        if self.world > 1:
            dist.barrier()  # every rank's files are complete before rank 0 signs them
        if self.rank == 0:
            sign(folder, steps_done, self.key)

    def latest(self, limit: int | None = None) -> int:
        """Steps completed by the newest verified checkpoint, at most `limit` (0: none). Rank 0 decides
        for all (`limit` matters on rank 0 only: the steps its measured.json holds)."""
        best = 0
        if self.rank == 0 and self.root.is_dir():
            for p in self.root.iterdir():
                m = _STEP_DIR.match(p.name)
                step = int(m.group(1)) if m else 0
                if m and best < step <= (limit if limit is not None else step) and verified(p, step, self.key):
                    best = int(m.group(1))
        if self.world > 1:
            t = torch.tensor([best], dtype=torch.int64)
            dist.broadcast(t, src=0)
            best = int(t.item())
        return best

    def load(self, steps_done: int) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        folder = self.folder(steps_done)
        if not verified(folder, steps_done, self.key):  # every rank checks what it is about to read
            raise RuntimeError(f"{folder}: checkpoint signature does not verify; refusing to load it")
        state = self._state()
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(self.model, self.optimizers, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=self._options())
