"""The AdaTAD seed config builds from a VideoMAE file kept in the mmaction2/OpenTAD layout (converted in memory)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

import opentad_lora.models.backbones.vit_adapter as vit_adapter
from opentad_lora.models.backbones.vit_adapter import VisionTransformerAdapter, VisionTransformerQLoRA
from opentad_lora.registry import MODELS, register_all_modules

ROOT = Path(__file__).resolve().parents[3]
SEED_CONFIG = ROOT / 'configs/adatad/thumos/e2e_thumos_videomae_s_768x1_160_adapter_qlora.py'
# Tiny VideoMAE: 32x32 frames -> 2x2 patches, chunks of 8 frames -> 4 steps, a 16-frame window = 2 chunks.
DIMS, DEPTH, HIDDEN = 32, 2, 128
TINY = dict(img_size=32, patch_size=16, embed_dims=DIMS, depth=DEPTH, num_heads=2, num_frames=8, tubelet_size=2,
            total_frames=16, drop_path_rate=0.0)
TOKENS = 4 * 2 * 2


def sinusoid_table(tokens: int, dims: int) -> torch.Tensor:
    """mmaction2's ``get_sinusoid_encoding`` (a persistent buffer in its VideoMAE), written from its formula."""
    angles = np.array([[p / 10000 ** (2 * (j // 2) / dims) for j in range(dims)] for p in range(tokens)])
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32).unsqueeze(0)


def mmaction_vit_state() -> dict:
    """A random tiny VideoMAE under mmaction2's Recognizer3D names, as OpenTAD's ``*_my.pth`` files hold it."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, base=0.0):
        return base + 0.1 * torch.randn(*shape, generator=gen)

    state = {'backbone.patch_embed.projection.weight': rand(DIMS, 3, 2, 16, 16),
             'backbone.patch_embed.projection.bias': rand(DIMS), 'backbone.pos_embed': sinusoid_table(TOKENS, DIMS)}
    for i in range(DEPTH):
        b = f'backbone.blocks.{i}.'
        state.update({
            b + 'norm1.weight': rand(DIMS, base=1), b + 'norm1.bias': rand(DIMS),
            b + 'attn.q_bias': rand(DIMS), b + 'attn.v_bias': rand(DIMS), b + 'attn.qkv.weight': rand(3 * DIMS, DIMS),
            b + 'attn.proj.weight': rand(DIMS, DIMS), b + 'attn.proj.bias': rand(DIMS),
            b + 'norm2.weight': rand(DIMS, base=1), b + 'norm2.bias': rand(DIMS),
            b + 'mlp.layers.0.0.weight': rand(HIDDEN, DIMS), b + 'mlp.layers.0.0.bias': rand(HIDDEN),
            b + 'mlp.layers.1.weight': rand(DIMS, HIDDEN), b + 'mlp.layers.1.bias': rand(DIMS)})
    state.update({'backbone.fc_norm.weight': rand(DIMS, base=1), 'backbone.fc_norm.bias': rand(DIMS),
                  'cls_head.fc_cls.weight': rand(400, DIMS), 'cls_head.fc_cls.bias': rand(400)})
    return state


def our_name(key: str) -> str:
    """The mmaction key's name in our backbone, written out by hand for this test."""
    key = key.removeprefix('backbone.').replace('patch_embed.projection', 'patch_embed.proj')
    return key.replace('mlp.layers.0.0', 'mlp.fc1').replace('mlp.layers.1', 'mlp.fc2')


@pytest.fixture
def opentad_file(tmp_path) -> str:
    path = tmp_path / 'vit-small-p16_videomae-k400-pre_16x4x1_kinetics-400_my.pth'
    torch.save(mmaction_vit_state(), path)  # OpenTAD's converter saves the bare Recognizer3D state dict
    return str(path)


def test_seed_config_builds_from_an_opentad_layout_file(opentad_file, monkeypatch):
    register_all_modules()
    cfg = Config.fromfile(SEED_CONFIG)
    assert cfg.model.backbone.pretrained.endswith('vit-small-p16_videomae-k400-pre_16x4x1_kinetics-400_my.pth')
    cfg.model.backbone.update(TINY, pretrained=opentad_file, with_cp=False, adapter_index=list(range(DEPTH)))
    cfg.model.projection.update(in_channels=DIMS, max_seq_len=32)  # divisible by the coarsest level's stride
    cfg.model.temporal_size = 32
    logs = []
    monkeypatch.setattr(vit_adapter, 'print_log', lambda msg, **kwargs: logs.append(msg))
    detector = MODELS.build(cfg.model)

    loading = [line for line in logs if line.startswith('pretrained ')]
    assert len(loading) == 1, logs
    assert 'renamed' in loading[0] and 'cls_head.fc_cls.weight' in loading[0] and 'backbone.pos_embed' in loading[0]
    assert 'fc_norm' in loading[0]  # the fine-tuned classifier's norm: AdaTAD reads raw tokens
    # The 4-bit model holds exactly what the same weights give when loaded from a file in our layout.
    state = mmaction_vit_state()
    ours = {our_name(k): v for k, v in state.items() if k.startswith('backbone.blocks') or 'patch_embed' in k}
    torch.save(dict(state_dict=ours), Path(opentad_file).with_name('ours.pth'))
    reference = VisionTransformerQLoRA(**TINY, adapter_index=list(range(DEPTH)), lora_r=16, lora_alpha=32,
                                       pretrained=str(Path(opentad_file).with_name('ours.pth')))
    got, want = detector.backbone.state_dict(), reference.state_dict()
    frozen = [k for k in want if 'lora_' not in k and 'adapter' not in k]
    assert any('weight' in k and got[k].dtype == torch.uint8 for k in frozen)  # packed NF4 weights are compared
    for key in frozen:
        assert torch.equal(got[key], want[key]), key


def test_float_backbone_weights_equal_the_file(opentad_file):
    model = VisionTransformerAdapter(**TINY, pretrained=opentad_file)
    own = model.state_dict()
    state = mmaction_vit_state()
    loaded = {our_name(k): v for k, v in state.items() if 'cls_head' not in k and 'fc_norm' not in k
              and k != 'backbone.pos_embed'}
    assert set(loaded) == {k for k in own if 'adapter' not in k}
    for key, value in loaded.items():
        assert torch.equal(own[key], value), key
    # mmaction2's own download nests the same tensors under `state_dict` next to `meta`.
    nested = Path(opentad_file).with_name('mmaction.pth')
    torch.save(dict(meta=dict(mmaction_version='1.2.0'), state_dict=state), nested)
    again = VisionTransformerAdapter(**TINY, pretrained=str(nested)).state_dict()
    assert all(torch.equal(again[k], v) for k, v in loaded.items())


def test_a_detector_checkpoint_is_not_taken_for_a_backbone(tmp_path):
    state = {**mmaction_vit_state(), 'rpn_head.cls_head.conv.weight': torch.zeros(1)}
    state = {k: v for k, v in state.items() if not k.startswith('cls_head')}
    state['projection.embed.0.conv.weight'] = torch.zeros(1)
    torch.save(dict(state_dict=state), tmp_path / 'detector.pth')
    with pytest.raises(ValueError, match='unknown keys.*projection.embed.0.conv.weight') as err:
        VisionTransformerAdapter(**TINY, pretrained=str(tmp_path / 'detector.pth'))
    assert 'detector.pth' in str(err.value)
