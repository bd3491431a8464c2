#!/usr/bin/env bash
# One command: set up, then plan a small GPT for this machine's CPU ranks, run the plan with
# torchrun, and print predicted vs measured. Extra arguments go to `planner demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup.sh
planner demo "$@"
