"""How a rank process ends: flushed, then without the interpreter's and C++'s exit-time destructors.

A DTensor device mesh keeps its gloo group alive after `destroy_process_group`; when the C++ runtime destroys
that group's worker threads at exit while they are still joinable, the rank aborts ("terminate called without
an active exception", SIGABRT) although every result was written: about one run in 30 of a two-rank worker
that builds DTensor models, and torchrun then reports the whole job failed. Every entry point that torchrun
starts leaves through `exit_rank` after its last write.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_rank(code: int) -> NoReturn:
    """Flush stdout and stderr, then end the process with `code` at once."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
