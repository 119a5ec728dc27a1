#!/usr/bin/env bash
# Set up the environment (fresh machine: creates .venv) and run the whole test suite on CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/setup_env.sh
source "$ROOT/tools/setup_env.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # tiny test tensors: threads cost more than they give
python -m pytest tests -q -p no:cacheprovider --durations=15 "$@"
