#!/usr/bin/env bash
# Create (once) and activate the project's virtual environment, then install opentad_lora into it.
# THE set-up command of the README and every docs/ page (installs every family's extras and the test tools):
#   bash tools/setup_env.sh && source .venv/bin/activate
# Also sourced by tools/quickstart.sh (runtime only) and tools/run_tests.sh; safe to run again (pip skips what is
# installed), e.g. to add the extras to the quickstart's .venv.
#
#   VENV        where the environment lives            (default: .venv in the repository root)
#   TORCH_SPEC  the PyTorch requirement to install     (default: torch==2.13.0, the CPU build on our machines;
#               on a CUDA machine use e.g. TORCH_SPEC="torch>=2.4" or install torch yourself first)
#   EXTRAS      extras of setup.py to install           (default: all,tests; empty: the runtime only)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${EXTRAS-all,tests}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c 'import torch' 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC"
    python -m pip install -q "$TORCH_SPEC" 2> >(grep -v 'is ignored: it is neither' >&2)
fi
# Pin the installed torch so no other package can pull a different (e.g. CUDA) build.
CONSTRAINTS="$VENV/torch-constraint.txt"
python -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > "$CONSTRAINTS"
TARGET="$ROOT${EXTRAS:+[$EXTRAS]}"
echo "[setup] installing opentad_lora${EXTRAS:+[$EXTRAS]} (torch pinned: $(cat "$CONSTRAINTS"))"
python -m pip install -q -c "$CONSTRAINTS" -e "$TARGET" 2> >(grep -v 'is ignored: it is neither' >&2)
# Packages needed only for a data file they ship, installed without their dependencies (open-clip-torch carries
# CLIP's BPE vocabulary but depends on torchvision, which has no CPU build here): never imported by us.
if [[ ",$EXTRAS," == *",all,"* || ",$EXTRAS," == *",clip,"* ]]; then
    python -m pip install -q --no-deps open-clip-torch 2> >(grep -v 'is ignored: it is neither' >&2)
fi
python -c 'import opentad_lora, torch, mmengine; print(f"[setup] opentad_lora {opentad_lora.__version__}, torch {torch.__version__}, mmengine {mmengine.__version__}")'
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run, not sourced: the caller's shell is not activated yet
    echo "[setup] done; activate it with: source ${VENV#"$PWD"/}/bin/activate"
fi
