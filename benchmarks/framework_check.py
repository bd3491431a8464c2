"""What the frameworks' own export checks share (check_megatron.py, check_megatron_deepspeed.py,
check_bridge.py): reading an export as its launch script would, and running one check to a one-line verdict.

Each check runs in the framework's own Python environment, so this module imports nothing from the
planner and nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path


def args_words(text: str) -> list[str]:
    """The argument words of an args file (comment lines dropped), as a shell would split them."""
    out: list[str] = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            out += shlex.split(line)
    return out


def launch_env(script: str) -> dict[str, str]:
    """The fixed `export NAME=VALUE` lines of a launch script (values built from shell variables left out)."""
    env = {}
    for line in script.splitlines():
        m = re.match(r"^export ([A-Z_][A-Z0-9_]*)=(\S+)", line)
        if m and "$" not in m.group(2):
            env[m.group(1)] = shlex.split(m.group(2))[0]
    return env


def run_check(check: Callable[[Path, str], str], default_stem: str,
              parser_exit: Callable[[SystemExit, str], str] | None = None) -> int:
    """`check(EXPORT_DIR, STEM)` from the command line: prints `passed: ...` or `failed: <reason>` and
    returns the exit status. The frameworks print a great deal; it is kept out of the verdict (and
    handed to `parser_exit`, which words an argument parser's exit, with the exit itself)."""
    folder = Path(sys.argv[1])
    stem = sys.argv[2] if len(sys.argv) > 2 else default_stem
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            verdict = check(folder, stem)
        print(verdict)
        return 0
    except BaseException as exc:
        if parser_exit is not None and isinstance(exc, SystemExit):  # the argument parser refused a flag
            print(parser_exit(exc, log.getvalue()))
            return 1
        traceback.print_exc()  # to stderr: check_exports.sh keeps it in a log file
        print(f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc).strip() else ''}"[:400])
    return 1
