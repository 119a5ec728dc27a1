"""Print the trainable/total parameter counts and the per-module LoRA table of the model a config builds.

    python tools/print_lora_info.py CONFIG [--cfg-options KEY=VALUE ...]
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import opentad_lora  # noqa: E402,F401  (before mmengine, which imports bitsandbytes: see its __init__)

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import opentad_lora.models  # noqa: E402,F401  (registers every model)
from opentad_lora.peft import print_lora_info  # noqa: E402
from opentad_lora.registry import MODELS  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Print the LoRA table of the model built from a config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config entries, xxx=yyy')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'opentad_lora'))
    return print_lora_info(MODELS.build(cfg.model))


if __name__ == '__main__':
    main()
