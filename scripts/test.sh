#!/usr/bin/env bash
# One command: set up, then run the linter and the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup.sh
ruff check planner executor tests benchmarks app.py
python -m pytest -q "$@"
