"""Export a trained LoRA checkpoint: PEFT adapter files and (unless ``--adapter-only``) a merged plain state dict.

    python tools/merge_lora.py CONFIG CHECKPOINT OUT_DIR [--adapter-only] [--adapter-name NAME]
                               [--cfg-options KEY=VALUE ...]

Builds the model of CONFIG (its pretrained base is loaded at construction), loads CHECKPOINT (a trimmed LoRA
checkpoint is enough) and writes ``OUT_DIR/adapter_model.safetensors`` + ``adapter_config.json`` (PEFT format) and
``OUT_DIR/merged_model.pth``: the state dict with the adapters folded into the weights, which loads into the same
model built without LoRA (e.g. ``--cfg-options model.lora=None`` for ``ImageClassifier``).
"""
import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import opentad_lora  # noqa: E402,F401  (before mmengine, which imports bitsandbytes: see its __init__)

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from torch import nn  # noqa: E402

import opentad_lora.models  # noqa: E402,F401  (registers every model)
from opentad_lora.engine.checkpoint import load_checkpoint_file  # noqa: E402
from opentad_lora.engine.export import save_adapter_folder, save_merged_model  # noqa: E402
from opentad_lora.peft import has_lora, trainable_state_dict  # noqa: E402
from opentad_lora.registry import MODELS  # noqa: E402

MERGED_NAME = 'merged_model.pth'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export LoRA adapter files and a merged state dict')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint written by tools/train.py')
    parser.add_argument('out_dir', help='output folder')
    parser.add_argument('--adapter-only', action='store_true', help='write the adapter files only')
    parser.add_argument('--adapter-name', default='default', help='adapter to export')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config entries, xxx=yyy')
    return parser.parse_args(argv)


def load_trained_model(cfg: Config, checkpoint: str) -> nn.Module:
    """Build ``cfg.model`` and load ``checkpoint`` into it; every trainable tensor must come from the file."""
    init_default_scope(cfg.get('default_scope', 'opentad_lora'))
    model = MODELS.build(cfg.model)
    if not has_lora(model):
        raise SystemExit(f'The model of {cfg.filename} has no LoRA layer: nothing to export.')
    loaded = load_checkpoint_file(checkpoint)
    state = {re.sub(r'^module\.', '', k): v for k, v in loaded.get('state_dict', loaded).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    lacking = sorted(set(missing) & set(trainable_state_dict(model)))
    if lacking or unexpected:
        raise SystemExit(f'{checkpoint} does not match the model of {cfg.filename}: missing trainable tensors '
                         f'{lacking[:5]}, unexpected {unexpected[:5]}.')
    return model.eval()


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    model = load_trained_model(cfg, args.checkpoint)
    out_dir = Path(args.out_dir)
    print(f'Adapter written to {save_adapter_folder(model, out_dir, args.adapter_name)}')
    if not args.adapter_only:
        print(f'Merged state dict written to {save_merged_model(model, out_dir, MERGED_NAME)}')


if __name__ == '__main__':
    main()
