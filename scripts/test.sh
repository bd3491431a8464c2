#!/usr/bin/env bash
# One command: set up, then run the linter and the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup.sh
# The dashboard's browser test needs Debian's chromium and Playwright for Python (its own browser
# download does not work offline); it skips with a reason when they cannot be installed.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 &&
    apt-get install -y -q chromium >/dev/null 2>&1)) || echo "chromium not installed: browser test will skip"
fi
python -c "import playwright" >/dev/null 2>&1 || pip install -q playwright || echo "playwright not installed"
# The exports' framework checks (tests/test_export.py) run torchtitan and DeepSpeed's own code; pinned, CPU-only
# (they reuse the installed torch 2.13.0), and optional: without them those tests skip with the reason.
python -c "import torchtitan, triton, deepspeed" >/dev/null 2>&1 ||
  pip install -q "torchtitan==0.3.0" "triton==3.9.0" "deepspeed==0.19.8" ||
  echo "torchtitan / deepspeed not installed: their export checks will skip"
# torchao: torchtitan's float8 / MXFP8 / NVFP4 converters, which the low-precision exports name (an abi3 wheel;
# --no-deps keeps the installed torch).
python -c "import torchao" >/dev/null 2>&1 || pip install -q --no-deps "torchao==0.18.0" ||
  echo "torchao not installed: the converter export check will skip"
ruff check .
# The 25 slowest tests listed: CI keeps under 20 minutes. Given test paths or options, one plain pytest run.
# Otherwise two: the in-process tests spread over up to 4 workers (pytest-xdist; 501 s on one worker, 325 s
# on two, on the 2-vCPU VM, 2026-12-07), then the multi-process torchrun tests (marked slow) one at a time,
# as their ranks already take the cores and their fault tests wait on timeouts.
if (($#)); then
  python -m pytest -q --durations=25 "$@"
else
  python -m pytest -q --durations=25 -m "not slow" -n auto --maxprocesses 4
  python -m pytest -q --durations=25 -m slow
fi
