"""Convert a detector checkpoint trained by OpenTAD (``epoch_X.pth``) into an MMEngine checkpoint of our layout.

Usage::

    python tools/model_converters/opentad_to_opentad_lora.py CONFIG epoch_X.pth out.pth [--no-ema]

``tools/test.py CONFIG epoch_X.pth`` reads OpenTAD's files directly; a converted copy serves ``load_from`` (to
fine-tune from it) and any MMEngine tool. The config must build the same detector (an ``*_adapter.py`` config: the
file has no LoRA weights); its ``pretrained`` file is not read, every tensor comes from the checkpoint. The EMA weights
are taken when the file has them, as OpenTAD's test does, unless ``--no-ema``.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import opentad_lora  # noqa: E402,F401  (before mmengine, which imports bitsandbytes: see its __init__)

from mmengine.config import Config  # noqa: E402

from opentad_lora.engine.checkpoint import atomic_torch_save, load_checkpoint_file  # noqa: E402
from opentad_lora.models.tad.opentad_checkpoint import (convert_opentad_checkpoint,  # noqa: E402
                                                        is_opentad_checkpoint)
from opentad_lora.registry import MODELS, register_all_modules  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config building the same detector (no LoRA)')
    parser.add_argument('src', help="OpenTAD's epoch_X.pth")
    parser.add_argument('dst', help='output checkpoint (MMEngine layout)')
    parser.add_argument('--no-ema', action='store_true', help='take state_dict even when state_dict_ema exists')
    args = parser.parse_args(argv)
    register_all_modules()
    try:
        checkpoint = load_checkpoint_file(args.src, map_location='cpu')
        if not is_opentad_checkpoint(checkpoint):
            raise ValueError(f'{args.src} is not an OpenTAD detector checkpoint (no state_dict_ema and no '
                             'backbone.model.* keys)')
        cfg = Config.fromfile(args.config)
        cfg.model.backbone.pretrained = None  # every tensor comes from the checkpoint
        model = MODELS.build(cfg.model)
        result = convert_opentad_checkpoint(checkpoint, model.state_dict(), use_ema=not args.no_ema, name=args.src)
    except (OSError, RuntimeError, ValueError) as err:  # missing/corrupt file, or a file that does not fit
        print(f'error: {err}', file=sys.stderr)
        return 2
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(dict(state_dict=result.state_dict, meta=dict(converted_from=str(args.src),
                                                                   opentad_weights=result.source)), args.dst)
    print(f'{args.src}: {len(result.state_dict)} tensors from {result.source} written to {args.dst}; dropped '
          f'{len(result.dropped)} with no counterpart: {result.dropped}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
