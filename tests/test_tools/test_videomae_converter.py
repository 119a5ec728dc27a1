"""tools/model_converters/videomae_to_opentad_lora.py on checkpoints written in the upstream key layouts.

Each case writes a tiny VideoMAE in one upstream layout (MCG-NJU fine-tuned / pre-trained, VideoMAE-v2 with layer
scale, mmaction2/OpenTAD), converts it with the CLI, loads the result into ``VisionTransformerAdapter`` and compares
its features with an independent re-implementation of VideoMAE's forward on the original tensors.
"""
import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opentad_lora.models.backbones.vit_adapter import VisionTransformerAdapter

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location('videomae_to_opentad_lora',
                                               ROOT / 'tools/model_converters/videomae_to_opentad_lora.py')
converter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(converter)

DIMS, DEPTH, HEADS, HIDDEN, PATCH, TUBELET, FRAMES, SIZE = 32, 2, 2, 128, 16, 2, 4, 32
TOKENS = (FRAMES // TUBELET) * (SIZE // PATCH) ** 2
MODEL_ARGS = dict(img_size=SIZE, patch_size=PATCH, embed_dims=DIMS, depth=DEPTH, num_heads=HEADS, mlp_ratio=4,
                  num_frames=FRAMES, tubelet_size=TUBELET, total_frames=2 * FRAMES, drop_path_rate=0.0)


def numpy_sincos(tokens: int, dims: int) -> torch.Tensor:
    """VideoMAE's ``get_sinusoid_encoding_table`` formula."""
    table = np.array([[p / np.power(10000, 2 * (j // 2) / dims) for j in range(dims)] for p in range(tokens)])
    table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


def videomae_weights(layer_scale: bool = False) -> dict:
    """A random tiny VideoMAE encoder under VideoMAE's own names (``blocks.N.gamma_1`` for layer scale)."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, base=0.0):
        return base + 0.1 * torch.randn(*shape, generator=gen)

    state = {'patch_embed.proj.weight': rand(DIMS, 3, TUBELET, PATCH, PATCH), 'patch_embed.proj.bias': rand(DIMS)}
    for i in range(DEPTH):
        b = f'blocks.{i}.'
        state.update({
            b + 'norm1.weight': rand(DIMS, base=1), b + 'norm1.bias': rand(DIMS),
            b + 'attn.qkv.weight': rand(3 * DIMS, DIMS), b + 'attn.q_bias': rand(DIMS), b + 'attn.v_bias': rand(DIMS),
            b + 'attn.proj.weight': rand(DIMS, DIMS), b + 'attn.proj.bias': rand(DIMS),
            b + 'norm2.weight': rand(DIMS, base=1), b + 'norm2.bias': rand(DIMS),
            b + 'mlp.fc1.weight': rand(HIDDEN, DIMS), b + 'mlp.fc1.bias': rand(HIDDEN),
            b + 'mlp.fc2.weight': rand(DIMS, HIDDEN), b + 'mlp.fc2.bias': rand(DIMS)})
        if layer_scale:
            state.update({b + 'gamma_1': rand(DIMS, base=0.5), b + 'gamma_2': rand(DIMS, base=0.5)})
    state.update({'norm.weight': rand(DIMS, base=1), 'norm.bias': rand(DIMS)})
    return state


def videomae_features(w: dict, video: torch.Tensor, final_norm=None, pos_embed=None) -> torch.Tensor:
    """VideoMAE's encoder on each 4-frame clip, tokens averaged over space, clips joined in time -> (B, C, T/2)."""
    pos = numpy_sincos(TOKENS, DIMS) if pos_embed is None else pos_embed
    feats = []
    for clip in video.split(FRAMES, dim=2):
        x = F.conv3d(clip, w['patch_embed.proj.weight'], w['patch_embed.proj.bias'], stride=(TUBELET, PATCH, PATCH))
        x = x.flatten(2).transpose(1, 2) + pos
        for i in range(DEPTH):
            b = f'blocks.{i}.'
            ln = F.layer_norm(x, (DIMS, ), w[b + 'norm1.weight'], w[b + 'norm1.bias'], eps=1e-6)
            bias = torch.cat([w[b + 'attn.q_bias'], torch.zeros(DIMS), w[b + 'attn.v_bias']])
            q, k, v = F.linear(ln, w[b + 'attn.qkv.weight'], bias).reshape(
                x.shape[0], -1, 3, HEADS, DIMS // HEADS).permute(2, 0, 3, 1, 4)
            attn = ((q * (DIMS // HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
            out = F.linear((attn @ v).transpose(1, 2).reshape(x.shape), w[b + 'attn.proj.weight'],
                           w[b + 'attn.proj.bias'])
            x = x + out * w.get(b + 'gamma_1', 1.0)
            ln = F.layer_norm(x, (DIMS, ), w[b + 'norm2.weight'], w[b + 'norm2.bias'], eps=1e-6)
            out = F.linear(F.gelu(F.linear(ln, w[b + 'mlp.fc1.weight'], w[b + 'mlp.fc1.bias'])),
                           w[b + 'mlp.fc2.weight'], w[b + 'mlp.fc2.bias'])
            x = x + out * w.get(b + 'gamma_2', 1.0)
        if final_norm == 'norm':
            x = F.layer_norm(x, (DIMS, ), w['norm.weight'], w['norm.bias'], eps=1e-6)
        x = x.reshape(x.shape[0], FRAMES // TUBELET, -1, DIMS).mean(2)
        if final_norm == 'fc_norm':
            x = F.layer_norm(x, (DIMS, ), w['norm.weight'], w['norm.bias'], eps=1e-6)
        feats.append(x)
    return torch.cat(feats, dim=1).transpose(1, 2)


def mcg_finetune(w: dict) -> tuple:
    """MCG-NJU fine-tuned file: {'model': ..., 'args': Namespace}, ``fc_norm`` and a classifier ``head``."""
    state = {k.replace('norm.', 'fc_norm.') if k.startswith('norm.') else k: v for k, v in w.items()}
    state.update({'head.weight': torch.zeros(400, DIMS), 'head.bias': torch.zeros(400)})
    ckpt = dict(model=state, epoch=30, args=argparse.Namespace(model='vit_small_patch16_224', num_frames=16))
    return ckpt, {'head.weight', 'head.bias'}, 'fc_norm'


def mcg_pretrain(w: dict) -> tuple:
    """MCG-NJU / VideoMAE-v2 pre-training file: ``encoder.`` encoder, a decoder and the mask token."""
    state = {f'encoder.{k}': v for k, v in w.items()}
    extra = {'decoder.blocks.0.attn.qkv.weight': torch.zeros(48, 16), 'decoder.norm.weight': torch.ones(16),
             'decoder.head.weight': torch.zeros(1536, 16), 'encoder_to_decoder.weight': torch.zeros(16, DIMS),
             'mask_token': torch.zeros(1, 1, 16)}
    ckpt = dict(model={**state, **extra}, args=argparse.Namespace(mask_ratio=0.9))
    return ckpt, set(extra), 'norm'


def v2_layer_scale(w: dict) -> tuple:
    """VideoMAE-v2 fine-tuned file with layer scale (``gamma_1``/``gamma_2``) under ``module`` with DDP prefixes."""
    state = {f'module.{k}'.replace('module.norm.', 'module.fc_norm.'): v for k, v in w.items()}
    state.update({'module.head.weight': torch.zeros(710, DIMS), 'module.head.bias': torch.zeros(710)})
    return dict(module=state), {'module.head.weight', 'module.head.bias'}, 'fc_norm'


def mmaction(w: dict) -> tuple:
    """mmaction2 / OpenTAD file: ``backbone.`` prefix, mmcv PatchEmbed and FFN names, the sin-cos buffer."""
    renames = (('patch_embed.proj.', 'patch_embed.projection.'), ('mlp.fc1.', 'mlp.layers.0.0.'),
               ('mlp.fc2.', 'mlp.layers.1.'), ('norm.', 'fc_norm.'))
    state = {}
    for key, value in w.items():
        for old, new in renames:
            if old in key and (old != 'norm.' or key.startswith('norm.')):
                key = key.replace(old, new)
        state[f'backbone.{key}'] = value
    extra = {'backbone.pos_embed': numpy_sincos(TOKENS, DIMS), 'cls_head.fc_cls.weight': torch.zeros(400, DIMS),
             'cls_head.fc_cls.bias': torch.zeros(400)}
    return dict(state_dict={**state, **extra}, meta=dict(mmaction_version='1.2.0')), set(extra), None


@pytest.mark.parametrize('layout', [mcg_finetune, mcg_pretrain, v2_layer_scale, mmaction])
def test_every_key_maps_and_features_match_videomae(tmp_path, capsys, layout):
    weights = videomae_weights(layer_scale=layout is v2_layer_scale)
    checkpoint, expected_dropped, final_norm = layout(weights)
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(checkpoint, src)
    assert converter.main([str(src), str(dst), '--strict']) == 0
    state = converter.read_videomae_file(str(src))
    result = converter.convert_videomae_state_dict(state)
    assert result.unmapped == []
    assert set(result.dropped) == expected_dropped
    assert len(result.renamed) == len(state) - len(expected_dropped)
    assert '0 unmapped' in capsys.readouterr().out

    extra = dict(init_values=0.1) if layout is v2_layer_scale else {}
    model = VisionTransformerAdapter(**MODEL_ARGS, **extra, final_norm=final_norm, pretrained=str(dst)).eval()
    video = torch.randn(2, 3, 2 * FRAMES, SIZE, SIZE)
    with torch.no_grad():
        ours = model(video)
    expected = videomae_features(weights, video, final_norm)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_backbone_arguments_are_read_off_the_tensors():
    result = converter.convert_videomae_state_dict(v2_layer_scale(videomae_weights(layer_scale=True))[0]['module'])
    args = converter.backbone_args(result.state_dict)
    assert {k: args[k] for k in ('embed_dims', 'depth', 'patch_size', 'tubelet_size', 'mlp_ratio', 'qkv_bias')} == \
        dict(embed_dims=DIMS, depth=DEPTH, patch_size=PATCH, tubelet_size=TUBELET, mlp_ratio=4.0, qkv_bias=True)
    assert 'init_values' in args and 'use_learnable_pos_emb' not in args


def test_opentad_adapters_are_kept():
    state = {'backbone.blocks.0.adapter.up_proj.weight': torch.zeros(DIMS, 8),
             'backbone.blocks.0.adapter.dwconv.bias': torch.zeros(8), 'backbone.blocks.0.adapter.gamma': torch.ones(1)}
    result = converter.convert_videomae_state_dict(state)
    assert sorted(result.state_dict) == ['blocks.0.adapter.dwconv.bias', 'blocks.0.adapter.gamma',
                                         'blocks.0.adapter.up_proj.weight']


def test_learned_pos_embed_is_kept_and_needs_the_flag(tmp_path):
    weights = videomae_weights()
    pos_embed = 0.1 * torch.randn(1, TOKENS, DIMS)
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(dict(model={**weights, 'pos_embed': pos_embed}), src)
    assert converter.main([str(src), str(dst)]) == 0
    with pytest.raises(ValueError, match='use_learnable_pos_emb=True'):
        VisionTransformerAdapter(**MODEL_ARGS, pretrained=str(dst))
    model = VisionTransformerAdapter(**MODEL_ARGS, use_learnable_pos_emb=True, pretrained=str(dst)).eval()
    video = torch.randn(1, 3, 2 * FRAMES, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(video), videomae_features(weights, video, pos_embed=pos_embed),
                                   rtol=1e-4, atol=1e-5)


def test_unmapped_keys_are_reported_and_strict_writes_nothing(tmp_path, capsys):
    state = {**videomae_weights(), 'blocks.0.attn.scale': torch.ones(HEADS, 1, 1)}  # VideoMAE-v2 cosine attention
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(dict(model=state), src)
    assert converter.main([str(src), str(dst), '--strict']) == 1
    assert 'blocks.0.attn.scale' in capsys.readouterr().out and not dst.exists()
    assert converter.main([str(src), str(dst)]) == 0
    assert 'blocks.0.attn.scale' not in torch.load(dst, weights_only=True)['state_dict']


def test_bad_files_name_the_file(tmp_path, capsys):
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'not a checkpoint')
    not_videomae = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(1)}, not_videomae)
    for path in (corrupt, not_videomae, tmp_path / 'missing.pth'):
        assert converter.main([str(path), str(tmp_path / 'out.pth')]) == 2
        assert str(path) in capsys.readouterr().err
