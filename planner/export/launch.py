"""Multi-node launch scripts: a torchrun script to run once per node, and a SLURM sbatch that runs it.

Why: a per-node `torchrun --standalone` (or a bare `run_train.sh`) forms one world per node, and
the frameworks refuse the plan's parallel sizes against an 8-rank world. Every export therefore
ships the same launcher: `torchrun --nnodes N --node-rank K --rdzv-backend static --rdzv-endpoint
HEAD:PORT --rdzv-id ID`, so node K holds global ranks K*G .. K*G+G-1 (the static rendezvous is
the one that honours --node-rank; torch/distributed/run.py ignores it for c10d). Knowing which node
holds which rank is what lets the script say where the pipeline's loss is printed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from planner.export.common import comment
from planner.plan import PlanDocument


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str
    why: str


@dataclass
class Launch:
    """What a framework's launch needs: environment, script lines, the program and its arguments."""

    name: str  # file stem: <name>.launch.sh, <name>.sbatch
    program: list[str]  # after torchrun's options: a script path or ["-m", "module"]
    env: list[EnvVar] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)  # bash lines (variables with placeholders)
    args: list[str] = field(default_factory=list)  # bash words after the program (may use variables)
    loss_rank: int = 0  # the global rank whose output has the training loss
    log_filter: bool = False  # torchtitan style: only the logging ranks print (torchrun --local-ranks-filter)


def loss_rank_location(doc: PlanDocument, rank: int) -> tuple[int, int]:
    """(node, local rank) of a global rank under the static rendezvous."""
    g = doc.cluster.gpus_per_node
    return rank // g, rank % g


def launch_script(doc: PlanDocument, launch: Launch, head: list[str]) -> str:
    """`<name>.launch.sh`: run once on every node with NODE_RANK and MASTER_ADDR set."""
    c = doc.cluster
    node, local = loss_rank_location(doc, launch.loss_rank)
    lines = ["#!/usr/bin/env bash"]
    text = comment([*head, "",
                    f"Run once on each of the {c.num_nodes} node(s), with the same MASTER_ADDR (node 0's address) "
                    f"and NODE_RANK = 0 .. {c.num_nodes - 1}:",
                    f"  NODE_RANK=0 MASTER_ADDR=<node-0-host> ./{launch.name}.launch.sh [extra arguments]",
                    f"or on SLURM: sbatch {launch.name}.sbatch [extra arguments]. Extra arguments are appended to the "
                    "command line, so they override the ones below.",
                    f"The training loss is printed by global rank {launch.loss_rank}: node {node}, local rank "
                    f"{local} (node k holds ranks k*{c.gpus_per_node} .. k*{c.gpus_per_node}+{c.gpus_per_node - 1})."])
    lines.append(text.rstrip("\n"))
    lines += ["set -euo pipefail", "set -f  # no globbing of the argument words",
              'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
              f"NNODES=${{NNODES:-{c.num_nodes}}}",
              f"NPROC_PER_NODE=${{NPROC_PER_NODE:-{c.gpus_per_node}}}",
              f"NODE_RANK=${{NODE_RANK:?set NODE_RANK to this node's index, 0 .. {c.num_nodes - 1}}}",
              "MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to node 0's hostname or address}",
              "MASTER_PORT=${MASTER_PORT:-29500}",
              f"RDZV_ID=${{RDZV_ID:-planner-{doc.hash}}}",
              "RDZV_BACKEND=${RDZV_BACKEND:-static}  # static: NODE_RANK fixes which ranks each node holds"]
    if launch.env:
        lines.append("# environment the framework requires")
        for e in launch.env:
            lines.append(f"export {e.name}={shlex.quote(e.value)}  # {e.why}")
    lines += launch.setup
    torchrun = ['torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE"',
                '  --rdzv-backend "$RDZV_BACKEND" --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RDZV_ID"']
    if launch.log_filter:
        lines += ["# only the ranks that log print to the console (all ranks still write their logs)",
                  "LOG_RANKS=''",
                  'if [ "$NODE_RANK" = 0 ]; then LOG_RANKS=0; fi']
        if (node, local) != (0, 0):
            lines.append(f'if [ "$NODE_RANK" = {node} ]; then LOG_RANKS="${{LOG_RANKS:+$LOG_RANKS,}}{local}"; fi')
        lines += ['FILTER=()',
                  'if [ -n "$LOG_RANKS" ]; then FILTER=(--local-ranks-filter "$LOG_RANKS" --role rank --tee 3); fi']
        torchrun.append('  ${FILTER[@]+"${FILTER[@]}"}')
    words = [f"exec {torchrun[0]}", *torchrun[1:], "  " + " ".join(launch.program),
             *("  " + a for a in launch.args), '  "$@"']
    lines.append(" \\\n".join(words))
    return "\n".join(lines) + "\n"


def sbatch_script(doc: PlanDocument, launch: Launch, head: list[str]) -> str:
    """`<name>.sbatch`: one task per node, each running the launch script with NODE_RANK = SLURM_NODEID."""
    c = doc.cluster
    lines = ["#!/usr/bin/env bash",
             f"#SBATCH --job-name=planner-{doc.hash}",
             f"#SBATCH --nodes={c.num_nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --gpus-per-node={c.gpus_per_node}",
             "#SBATCH --exclusive",
             comment([*head, "", f"sbatch {launch.name}.sbatch [extra arguments]: add your partition / account / "
                      f"time limit (#SBATCH lines or sbatch options). It runs {launch.name}.launch.sh once per node."
                      ]).rstrip("\n"),
             "set -euo pipefail",
             'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
             "export MASTER_ADDR",
             "export MASTER_PORT=${MASTER_PORT:-29500}",
             'export NNODES="$SLURM_NNODES" RDZV_ID="$SLURM_JOB_ID"',
             f'srun --kill-on-bad-exit=1 bash -c \'NODE_RANK="$SLURM_NODEID" exec '
             f'"$SLURM_SUBMIT_DIR/{launch.name}.launch.sh" "$@"\' _ "$@"']
    return "\n".join(lines) + "\n"
