#!/usr/bin/env bash
# The README's main job, end to end on CPU (2 min 8 s on 2 cores with .venv already there, see the README):
#   set up .venv -> write the synthetic THUMOS-format dataset (mp4 + JSON) -> fine-tune a VideoMAE-style backbone
#   with QLoRA-4bit + AdaTAD adapters and an ActionFormer-style detector -> evaluate mAP with tools/test.py ->
#   export the adapter (PEFT files) and a merged model with tools/merge_lora.py.
# Extra arguments go to tools/train.py (e.g. --cfg-options train_cfg.max_epochs=2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${EXTRAS-}"  # the main job needs the runtime requirements only
# shellcheck source=tools/setup_env.sh
source "$ROOT/tools/setup_env.sh"
cd "$ROOT"

CONFIG=configs/quickstart/adatad_qlora_synthetic_thumos.py
WORK_DIR="${WORK_DIR:-work_dirs/adatad_qlora_synthetic_thumos}"
DATA=data/synthetic_thumos

if [ ! -f "$DATA/annotations/thumos_14_anno.json" ]; then
    echo "[quickstart] writing the synthetic THUMOS-format dataset to $DATA"
    python tools/data/make_synthetic_thumos.py --out "$DATA"
fi
echo "[quickstart] training $CONFIG"
python tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
CKPT="$WORK_DIR/$(basename "$(cat "$WORK_DIR/last_checkpoint")")"
echo "[quickstart] evaluating $CKPT"
python tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR" --out "$WORK_DIR/test_metrics.json"
echo "[quickstart] exporting the adapter and a merged model to $WORK_DIR/export"
python tools/merge_lora.py "$CONFIG" "$CKPT" "$WORK_DIR/export"
echo "[quickstart] done: metrics in $WORK_DIR/test_metrics.json, adapter + merged model in $WORK_DIR/export"
