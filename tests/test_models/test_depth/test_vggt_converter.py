"""tools/model_converters/vggt_to_opentad_lora.py maps every key of an official-layout VGGT checkpoint."""
import importlib.util
from pathlib import Path

import pytest
import torch

import opentad_lora.models  # noqa: F401
from opentad_lora.registry import MODELS

ROOT = Path(__file__).resolve().parents[3]
C, HEADS, DEPTH, MLP, PATCH, GRID = 16, 2, 2, 2, 14, 2  # aggregator width, heads, blocks, mlp ratio, patch, grid
FEATURES, OUT_CHANNELS = 16, (8, 16, 32, 32)
MODEL = dict(
    type='DepthEstimator',
    aggregator=dict(type='VGGTAggregator', img_size=PATCH * GRID, patch_size=PATCH, embed_dim=C, depth=DEPTH,
                    num_heads=HEADS, mlp_ratio=MLP, patch_embed=dict(depth=1, num_heads=HEADS)),
    depth_head=dict(type='DPTHeadLoRA', features=FEATURES, out_channels=list(OUT_CHANNELS),
                    intermediate_layer_idx=[0, 1, 1, 1]),
    camera_head=dict(type='CameraHead', trunk_depth=1, num_heads=HEADS),
)


def _linear(prefix, out_dim, in_dim):
    return {f'{prefix}.weight': (out_dim, in_dim), f'{prefix}.bias': (out_dim, )}


def _norm(prefix, dim):
    return {f'{prefix}.weight': (dim, ), f'{prefix}.bias': (dim, )}


def _block(prefix, dim, mlp_ratio, qk_norm):
    """Keys of upstream ``vggt/layers/block.py::Block`` (with ``attention.py::Attention`` and ``mlp.py::Mlp``)."""
    keys = {**_norm(f'{prefix}.norm1', dim), **_linear(f'{prefix}.attn.qkv', 3 * dim, dim),
            **_linear(f'{prefix}.attn.proj', dim, dim), f'{prefix}.ls1.gamma': (dim, ), **_norm(f'{prefix}.norm2', dim),
            **_linear(f'{prefix}.mlp.fc1', dim * mlp_ratio, dim), **_linear(f'{prefix}.mlp.fc2', dim, dim * mlp_ratio),
            f'{prefix}.ls2.gamma': (dim, )}
    if qk_norm:
        keys.update(_norm(f'{prefix}.attn.q_norm', dim // HEADS), **_norm(f'{prefix}.attn.k_norm', dim // HEADS))
    return keys


def _conv(prefix, out_ch, in_ch, k, bias=True):
    keys = {f'{prefix}.weight': (out_ch, in_ch, k, k)}
    if bias:
        keys[f'{prefix}.bias'] = (out_ch, )
    return keys


def _dpt(prefix, dim_in, output_dim):
    """Keys of upstream ``vggt/heads/dpt_head.py::DPTHead``."""
    keys = _norm(f'{prefix}.norm', dim_in)
    for i, oc in enumerate(OUT_CHANNELS):
        keys.update(_conv(f'{prefix}.projects.{i}', oc, dim_in, 1))
        keys.update(_conv(f'{prefix}.scratch.layer{i + 1}_rn', FEATURES, oc, 3, bias=False))
    keys.update({f'{prefix}.resize_layers.0.weight': (OUT_CHANNELS[0], OUT_CHANNELS[0], 4, 4),
                 f'{prefix}.resize_layers.0.bias': (OUT_CHANNELS[0], ),
                 f'{prefix}.resize_layers.1.weight': (OUT_CHANNELS[1], OUT_CHANNELS[1], 2, 2),
                 f'{prefix}.resize_layers.1.bias': (OUT_CHANNELS[1], )})
    keys.update(_conv(f'{prefix}.resize_layers.3', OUT_CHANNELS[3], OUT_CHANNELS[3], 3))
    for i in range(1, 5):
        units = ['resConfUnit2'] + (['resConfUnit1'] if i < 4 else [])
        keys.update(_conv(f'{prefix}.scratch.refinenet{i}.out_conv', FEATURES, FEATURES, 1))
        for unit in units:
            for conv in ('conv1', 'conv2'):
                keys.update(_conv(f'{prefix}.scratch.refinenet{i}.{unit}.{conv}', FEATURES, FEATURES, 3))
    keys.update(_conv(f'{prefix}.scratch.output_conv1', FEATURES // 2, FEATURES, 3))
    keys.update(_conv(f'{prefix}.scratch.output_conv2.0', 32, FEATURES // 2, 3))
    keys.update(_conv(f'{prefix}.scratch.output_conv2.2', output_dim, 32, 1))
    return keys


def official_vggt_shapes():
    """Every key of an official ``VGGT`` state dict for the tiny sizes above, written from the upstream code."""
    shapes = {'aggregator.camera_token': (1, 2, 1, C), 'aggregator.register_token': (1, 2, 4, C),
              'aggregator.patch_embed.cls_token': (1, 1, C), 'aggregator.patch_embed.pos_embed': (1, 1 + GRID ** 2, C),
              'aggregator.patch_embed.register_tokens': (1, 4, C), 'aggregator.patch_embed.mask_token': (1, C),
              **_conv('aggregator.patch_embed.patch_embed.proj', C, 3, PATCH),
              **_block('aggregator.patch_embed.blocks.0', C, 4, qk_norm=False),
              **_norm('aggregator.patch_embed.norm', C)}
    for kind in ('frame', 'global'):
        for i in range(DEPTH):
            shapes.update(_block(f'aggregator.{kind}_blocks.{i}', C, MLP, qk_norm=True))
    shapes.update(_block('camera_head.trunk.0', 2 * C, 4, qk_norm=False))
    shapes.update({**_norm('camera_head.token_norm', 2 * C), **_norm('camera_head.trunk_norm', 2 * C),
                   'camera_head.empty_pose_tokens': (1, 1, 9), **_linear('camera_head.embed_pose', 2 * C, 9),
                   **_linear('camera_head.poseLN_modulation.1', 6 * C, 2 * C),
                   **_linear('camera_head.pose_branch.fc1', C, 2 * C), **_linear('camera_head.pose_branch.fc2', 9, C)})
    shapes.update(_dpt('depth_head', 2 * C, 2))
    shapes.update(_dpt('point_head', 2 * C, 4))
    shapes.update({'track_head.feature_extractor.norm.weight': (2 * C, ),
                   'track_head.tracker.updateformer.time_blocks.0.attn.qkv.weight': (12, 4)})
    return shapes


def _converter():
    spec = importlib.util.spec_from_file_location('vggt_converter',
                                                  ROOT / 'tools' / 'model_converters' / 'vggt_to_opentad_lora.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_config(tmp_path):
    path = tmp_path / 'tiny_vggt.py'
    path.write_text(f'model = {MODEL!r}\n')
    return str(path)


def test_converter_maps_every_key_of_an_official_checkpoint(tmp_path, capsys):
    official = {k: torch.randn(shape) for k, shape in official_vggt_shapes().items()}
    src, dst = tmp_path / 'model.pt', tmp_path / 'converted.pth'
    torch.save({'model': {f'module.{k}': v for k, v in official.items()}}, src)  # DDP-wrapped, nested
    assert _converter().main([str(src), str(dst), '--config', _write_config(tmp_path)]) == 0
    dropped = [k for k in official if k.startswith(('point_head.', 'track_head.'))]
    assert f'dropped {len(dropped)} tensors' in capsys.readouterr().out
    model = MODELS.build(dict(MODEL, pretrained=str(dst)))
    state = model.state_dict()
    kept = {k for k in official if k.split('.')[0] in ('aggregator', 'camera_head', 'depth_head')}
    assert set(state) == kept
    for key in kept:
        assert torch.equal(state[key], official[key]), key


def test_converter_refuses_foreign_or_misfitting_checkpoints(tmp_path):
    config = _write_config(tmp_path)
    foreign = tmp_path / 'foreign.pt'
    torch.save({'backbone.blocks.0.attn.qkv.weight': torch.zeros(3, 1)}, foreign)
    with pytest.raises(SystemExit, match='foreign.pt: Not an official VGGT checkpoint'):
        _converter().main([str(foreign), str(tmp_path / 'out.pth')])
    shapes = official_vggt_shapes()
    shapes['aggregator.camera_token'] = (1, 2, 1, C + 1)
    del shapes['depth_head.norm.bias']
    bad = tmp_path / 'bad.pt'
    torch.save({k: torch.zeros(s) for k, s in shapes.items()}, bad)
    with pytest.raises(SystemExit, match=r'missing depth_head\.norm\.bias.*shape of aggregator\.camera_token'):
        _converter().main([str(bad), str(tmp_path / 'out.pth'), '--config', config])
    assert not (tmp_path / 'out.pth').exists()
    with pytest.raises(ValueError, match=r'bad\.pt does not fit this DepthEstimator'):
        MODELS.build(dict(MODEL, pretrained=str(bad)))
