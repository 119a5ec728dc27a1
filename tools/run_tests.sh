#!/usr/bin/env bash
# Set up the environment (fresh machine: creates .venv) and run the whole test suite on CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/setup_env.sh
source "$ROOT/tools/setup_env.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # tiny test tensors: threads cost more than they give
# One pytest worker per usable core (at most 4: tests start torchrun and Flower processes of their own), a test file
# per worker so module fixtures such as the Flower federation are set up once. On 2 cores pytest takes 0.67–0.87
# of its one-process time (README). PYTEST_WORKERS=0 runs it in this process.
WORKERS="${PYTEST_WORKERS:-$(python -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')}"
python -m pytest tests -q -p no:cacheprovider --durations=15 -n "$WORKERS" --dist loadfile "$@"
