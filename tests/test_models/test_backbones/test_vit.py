"""VisionTransformer: shapes, presets, checkpointing equivalence, LoRA target names, pretrained layouts."""
import pytest
import torch
import torch.nn.functional as F

from opentad_lora.models.backbones import VisionTransformer
from opentad_lora.models.layers import sincos_2d
from opentad_lora.peft import apply_lora

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)


def _vit(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{**TINY, **kwargs}).eval()


@pytest.mark.parametrize('out_type, use_cls_token, shape', [
    ('cls', True, (2, 32)), ('cls', False, (2, 32)), ('tokens', True, (2, 17, 32)), ('tokens', False, (2, 16, 32)),
    ('featmap', True, (2, 32, 4, 4)), ('featmap', False, (2, 32, 4, 4)),
])
def test_output_shapes(out_type, use_cls_token, shape):
    assert _vit(out_type=out_type, use_cls_token=use_cls_token)(torch.randn(2, 3, 32, 32)).shape == shape


def test_out_types_are_views_of_the_same_tokens():
    torch.manual_seed(0)
    model = _vit(out_type='tokens', use_cls_token=False)
    x = torch.randn(2, 3, 32, 32)
    tokens = model(x)
    model.out_type = 'cls'
    torch.testing.assert_close(model(x), tokens.mean(dim=1))
    model.out_type = 'featmap'
    torch.testing.assert_close(model(x)[:, :, 1, 2], tokens[:, 1 * 4 + 2])


def test_arch_presets_and_explicit_overrides():
    assert VisionTransformer.resolve_arch('base')['embed_dim'] == 768
    hamer = VisionTransformer.resolve_arch('hamer-huge')
    assert (hamer['img_size'], hamer['patch_size'], hamer['patch_padding'], hamer['depth'], hamer['embed_dim'],
            hamer['use_cls_token'], hamer['out_type']) == ((256, 192), 16, 2, 32, 1280, False, 'featmap')
    small_hamer = VisionTransformer(arch='hamer-huge', embed_dim=32, depth=1, num_heads=2).eval()
    assert small_hamer(torch.randn(1, 3, 256, 192)).shape == (1, 32, 16, 12)
    assert small_hamer.arch_settings['drop_path_rate'] == 0.55
    with pytest.raises(ValueError, match='Unknown ViT arch'):
        VisionTransformer(arch='gigantic')
    with pytest.raises(ValueError, match='out_type'):
        _vit(out_type='pooled')


def test_other_input_size_interpolates_learned_and_recomputes_sincos():
    learned = _vit(out_type='featmap')
    assert learned(torch.randn(1, 3, 48, 64)).shape == (1, 32, 6, 8)
    sincos = _vit(out_type='featmap', pos_embed='sincos', use_cls_token=False)
    assert 'pos_embed' not in sincos.state_dict()
    torch.testing.assert_close(sincos.pos_embed[0], sincos_2d(32, (4, 4)))
    assert sincos(torch.randn(1, 3, 48, 64)).shape == (1, 32, 6, 8)


def test_with_cp_gives_same_outputs_and_grads_with_drop_path():
    x = torch.randn(2, 3, 32, 32)
    results = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = _vit(drop_path_rate=0.5, drop_rate=0.1, with_cp=with_cp).train()
        torch.manual_seed(1)
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert torch.equal(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], msg=name)


def test_timm_names_and_lora_targets_exist():
    model = _vit()
    names = dict(model.named_modules())
    for block in range(2):
        for leaf in ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2'):
            assert f'blocks.{block}.{leaf}' in names
    assert {'cls_token', 'pos_embed', 'patch_embed.proj.weight', 'norm.weight'} <= set(model.state_dict())
    report = apply_lora(model, dict(r=2, targets=['qkv', 'attn.proj', 'fc1', 'fc2']))
    assert sorted(report.wrapped) == sorted(f'blocks.{b}.{leaf}' for b in range(2)
                                            for leaf in ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2'))


def _roundtrip(tmp_path, state, **kwargs) -> VisionTransformer:
    path = tmp_path / 'pretrained.pth'
    torch.save(state, path)
    return _vit(pretrained=str(path), **kwargs)


def test_pretrained_timm_layout_loads_exactly(tmp_path):
    torch.manual_seed(0)
    source = _vit()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)  # a different init: the file must overwrite every tensor
    loaded = _roundtrip(tmp_path, {**source.state_dict(), 'head.weight': torch.zeros(10, 32)})
    torch.testing.assert_close(loaded(x), source(x))


def test_pretrained_mmpretrain_classifier_layout_loads_exactly(tmp_path):
    torch.manual_seed(0)
    source = _vit()
    renames = [('patch_embed.proj.', 'patch_embed.projection.'), ('.norm1.', '.ln1.'), ('.norm2.', '.ln2.'),
               ('.mlp.fc1.', '.ffn.layers.0.0.'), ('.mlp.fc2.', '.ffn.layers.1.'), ('blocks.', 'layers.')]
    state = {}
    for key, value in source.state_dict().items():
        key = 'ln1.' + key[len('norm.'):] if key.startswith('norm.') else key
        for old, new in renames:
            key = key.replace(old, new)
        state['backbone.' + key] = value
    state['head.layers.head.weight'] = torch.zeros(3, 32)
    torch.manual_seed(1)
    loaded = _roundtrip(tmp_path, {'meta': {}, 'state_dict': state})
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x))


def test_pretrained_vitpose_layout_folds_class_slot(tmp_path):
    torch.manual_seed(0)
    source = _vit(use_cls_token=False, out_type='featmap')
    state = {k.replace('norm.', 'last_norm.') if k.startswith('norm.') else k: v
             for k, v in source.state_dict().items()}
    cls_slot = torch.randn(1, 1, 32)
    state['pos_embed'] = torch.cat([cls_slot, source.pos_embed.detach() - cls_slot], dim=1)  # ViTPose: (1, N+1, C)
    loaded = _roundtrip(tmp_path, {'state_dict': {'backbone.' + k: v for k, v in state.items()}},
                        use_cls_token=False, out_type='featmap')
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x))


def test_pretrained_other_resolution_is_resampled(tmp_path):
    torch.manual_seed(0)
    source = _vit(img_size=16)  # 2x2 grid
    loaded = _roundtrip(tmp_path, source.state_dict())  # 4x4 grid
    grid = source.pos_embed.detach()[:, 1:].reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(4, 4), mode='bicubic', align_corners=False).permute(0, 2, 3, 1).reshape(1, 16, 32)
    torch.testing.assert_close(loaded.pos_embed.detach()[:, 1:], ref)
    torch.testing.assert_close(loaded.pos_embed.detach()[:, :1], source.pos_embed.detach()[:, :1])


def test_pretrained_errors_name_the_file(tmp_path):
    state = _vit().state_dict()
    incomplete = {k: v for k, v in state.items() if 'blocks.1.' not in k}
    with pytest.raises(KeyError, match='pretrained.pth lacks'):
        _roundtrip(tmp_path, incomplete)
    wrong = dict(state, **{'blocks.0.attn.qkv.weight': torch.zeros(3, 3)})
    with pytest.raises(RuntimeError, match='pretrained.pth does not fit'):
        _roundtrip(tmp_path, wrong)
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        _vit(pretrained=str(tmp_path / 'missing.pth'))
