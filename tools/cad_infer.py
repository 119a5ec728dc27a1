"""Generate CadQuery programs from point clouds with a trained CAD-Recode model, merged or adapter.

    python tools/cad_infer.py CHECKPOINT --points a.npy [b.ply ...] [--out-dir DIR] [--execute]
                              [--config CFG] [--base HF_DIR] [--adapter-name NAME] [--num-points 256]
                              [--max-new-tokens N] [--export-merged DIR]

CHECKPOINT is recognised by its files:
  * a merged model: an HF folder with ``config.json`` + ``*.safetensors`` (``CADRecodeLoRA.export_merged``, a
    CAD-Recode checkpoint), or a work dir / folder holding such a ``merged_model/`` (preferred when both exist);
  * an adapter: a folder with ``adapter_config.json`` + ``adapter_model.safetensors`` (or a work dir holding
    ``final_lora_weights/``). The frozen base is rebuilt from ``--config`` (its ``model`` without ``lora``), else
    from ``cad_recode.json`` next to the adapter (written by ``CADRecodeLoRA.save_adapter``), else from
    ``--base`` or the adapter's ``base_model_name_or_path`` (an HF folder with the tokenizer); tokenizer files
    next to the adapter are used first;
  * a Runner checkpoint (``.pth``) with ``--config``.
The LLM runs in the checkpoint's dtype (``config.json``; bfloat16 for the released CAD-Recode weights) and the points
are prepared as the checkpoint's point encoder expects (``CADRecodeLoRA.point_recipe``: CAD-Recode v1 = xyz + normals,
random sampling sorted by z, seeded by ``--seed``; v1.5 = xyz, furthest point sampling). Programs are printed and, with ``--out-dir``, written as ``<stem>.py``; ``--execute`` runs them in the CAD sandbox
and writes the mesh as ``<stem>.stl``. ``--export-merged DIR`` writes the loaded model merged, in the HF layout
(``CADRecodeLoRA.export_merged``: LLM + ``point_encoder.*`` + tokenizer), e.g. ``WORK_DIR/merged_model``.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from opentad_lora.datasets.cad import LoadCADPointCloud, write_mesh  # noqa: E402
from opentad_lora.models.cad import CADRecodeLoRA  # noqa: E402
from opentad_lora.models.cad.cad_recode import SIDECAR  # noqa: E402
from opentad_lora.peft.state import CONFIG_NAME  # noqa: E402
from opentad_lora.registry import MODELS  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Point clouds -> CadQuery programs with a CAD-Recode model')
    parser.add_argument('checkpoint', help='merged HF folder, adapter folder, work dir or Runner .pth')
    parser.add_argument('--points', nargs='*', default=[], help='point clouds (.npy/.ply)')
    parser.add_argument('--out-dir', help='write <stem>.py (and <stem>.stl with --execute) here')
    parser.add_argument('--execute', action='store_true', help='run the programs in the CAD sandbox')
    parser.add_argument('--config', help='config whose model is the base (adapter folders, .pth checkpoints)')
    parser.add_argument('--base', help='HF folder of the base LLM and tokenizer (adapter folders; the tokenizer of '
                        'a merged folder without one, e.g. a CAD-Recode release)')
    parser.add_argument('--adapter-name', default='default')
    parser.add_argument('--num-points', type=int, default=256, help='points per cloud given to the model')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random point sampling (v1 checkpoints)')
    parser.add_argument('--max-new-tokens', type=int, default=None)
    parser.add_argument('--export-merged', help='write the merged model (HF layout) to this folder')
    args = parser.parse_args(argv)
    if not args.points and not args.export_merged:
        parser.error('give --points and/or --export-merged')
    return args


def _is_merged(folder: Path) -> bool:
    return (folder / 'config.json').is_file() and any(folder.glob('*.safetensors'))


def _is_adapter(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file()


def _has_tokenizer(folder: Path) -> bool:
    return (folder / 'tokenizer_config.json').is_file()


def _config_model(config: str, without_lora: bool) -> dict:
    cfg = Config.fromfile(config)
    init_default_scope(cfg.get('default_scope', 'opentad_lora'))
    model = cfg.model.to_dict()
    if without_lora:
        model['lora'] = None
    return model


def _adapter_base(folder: Path, config: Optional[str], base: Optional[str]) -> CADRecodeLoRA:
    """The frozen base an adapter folder was trained on, without LoRA."""
    if config:
        return MODELS.build(_config_model(config, without_lora=True))
    if (folder / SIDECAR).is_file():
        sidecar = json.loads((folder / SIDECAR).read_text())
        tokenizer = str(folder) if _has_tokenizer(folder) else sidecar['tokenizer']
        return CADRecodeLoRA(llm=sidecar['llm'], tokenizer=tokenizer, num_freqs=sidecar['num_freqs'],
                             point_normals=sidecar.get('point_normals', False),
                             max_new_tokens=sidecar['max_new_tokens'])
    base = base or json.loads((folder / CONFIG_NAME).read_text()).get('base_model_name_or_path')
    if not base:
        raise SystemExit(f'{folder} does not name its base: give --config or --base.')
    return CADRecodeLoRA(llm=dict(pretrained=base), tokenizer=str(folder) if _has_tokenizer(folder) else base)


def load_cad_model(checkpoint: str, config: Optional[str] = None, base: Optional[str] = None,
                   adapter_name: str = 'default') -> Tuple[CADRecodeLoRA, str]:
    """``(model in eval mode, 'merged' | 'adapter' | 'checkpoint')`` for any kind of CAD-Recode checkpoint."""
    path = Path(checkpoint)
    if path.is_file():
        if not config:
            raise SystemExit(f'{path} is a Runner checkpoint: give --config.')
        from opentad_lora.engine.checkpoint import load_checkpoint_file

        from opentad_lora.peft import trainable_state_dict

        model = MODELS.build(_config_model(config, without_lora=False))
        state = load_checkpoint_file(str(path))
        missing, _ = model.load_state_dict(state.get('state_dict', state), strict=False)
        lacking = sorted(set(missing) & set(trainable_state_dict(model)))
        if lacking:
            raise SystemExit(f'{path} lacks trainable tensors of the model of {config}: {lacking[:5]}')
        return model.eval(), 'checkpoint'
    if not path.is_dir():
        raise SystemExit(f'Checkpoint {path} does not exist.')
    for folder in (path / 'merged_model', path):
        if _is_merged(folder):
            sidecar = json.loads((folder / SIDECAR).read_text()) if (folder / SIDECAR).is_file() else {}
            llm = dict(sidecar.get('llm', {}), pretrained=str(folder))
            tokenizer = str(folder) if _has_tokenizer(folder) else base
            if tokenizer is None:  # CAD-Recode's releases ship no tokenizer: it is Qwen2-1.5B's
                raise SystemExit(f'{folder} has no tokenizer files: give --base <folder with the base LLM\'s '
                                 'tokenizer> (Qwen2-1.5B for the CAD-Recode releases).')
            return CADRecodeLoRA(llm=llm, tokenizer=tokenizer).eval(), 'merged'
    for folder in (path, path / 'final_lora_weights'):
        if _is_adapter(folder):
            model = _adapter_base(folder, config, base)
            model.load_adapter(folder, adapter_name)
            return model.eval(), 'adapter'
    raise SystemExit(f'{path} holds neither a merged model (config.json + *.safetensors) nor an adapter '
                     f'({CONFIG_NAME}).')


def load_points(paths: List[str], recipe: str, num_points: int, seed: int = 0) -> torch.Tensor:
    """``(B, num_points, 3|6)`` points of the files, prepared with ``LoadCADPointCloud(recipe=recipe)``; random
    sampling (v1) is seeded, so a run is repeatable."""
    loader = LoadCADPointCloud(num_points=num_points, recipe=recipe)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return torch.stack([torch.from_numpy(loader(dict(points_path=p))['points']) for p in paths])
    finally:
        np.random.set_state(state)


def main(argv: Optional[List[str]] = None) -> List[str]:
    args = parse_args(argv)
    model, kind = load_cad_model(args.checkpoint, args.config, args.base, args.adapter_name)
    print(f'Loaded the CAD-Recode model ({kind}) from {args.checkpoint}')
    if args.export_merged:
        print(f'Merged model written to {model.export_merged(args.export_merged)}')
    if not args.points:
        return []
    print(f'Point preprocessing: CAD-Recode {model.point_recipe} (as the checkpoint\'s point encoder), '
          f'{args.num_points} points, LLM in {str(model.llm_dtype).replace("torch.", "")}')
    points = load_points(args.points, model.point_recipe, args.num_points, args.seed)
    codes = model.generate(points, args.max_new_tokens)
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    sandbox = None
    if args.execute:
        from opentad_lora.evaluation.cad import CodeSandbox
        sandbox = CodeSandbox()
    try:
        for path, code in zip(args.points, codes):
            stem = Path(path).stem
            print(f'# {path}\n{code}')
            if out_dir:
                (out_dir / f'{stem}.py').write_text(code, encoding='utf-8')
            if sandbox is not None:
                result = sandbox.run(code)
                print(f'# {stem}: {result.status} {result.error}'.rstrip())
                if result.valid and out_dir:
                    write_mesh(out_dir / f'{stem}.stl', result.vertices, result.faces)
    finally:
        if sandbox is not None:
            sandbox.close()
    return codes


if __name__ == '__main__':
    main()
