"""ViTLoRA: architectures, LoRA placement per encoder, freezing, the seed's API and config forms."""
import numpy as np
import pytest
import torch

from opentad_lora.models.clip import (CLIP_ARCHS, ViTLoRA, create_clip_model, get_lora_info, get_model_summary,
                                      get_parameters, get_parameters_dict, is_lora_enabled, resolve_arch,
                                      set_parameters)
from opentad_lora.peft import count_parameters

QKV = ['q_proj', 'k_proj', 'v_proj']
TINY = dict(base='tiny', text=dict(vocab_size=64))


def clip_params(arch: dict) -> int:
    """CLIP's parameter count from its shapes (OpenAI's layout: biased q/k/v/out, MLP x4, LayerNorms)."""
    def block(w):
        return 4 * (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w) + 2 * 2 * w

    v, t, e = arch['vision'], arch['text'], arch['embed_dim']
    grid = v['image_size'] // v['patch_size']
    vision = 3 * v['patch_size'] ** 2 * v['width'] + v['width'] * (grid ** 2 + 2) + 4 * v['width'] \
        + v['layers'] * block(v['width']) + v['width'] * e
    text = (t['vocab_size'] + t['context_length']) * t['width'] + t['layers'] * block(t['width']) \
        + 2 * t['width'] + t['width'] * e
    return vision + text + 1


def lora_params(arch: dict, towers: dict, r: int) -> int:
    """The seed's formula: layers x targets x r x (in + out) per tower (all targets are width x width)."""
    return sum(arch[tower]['layers'] * len(targets) * r * 2 * arch[tower]['width'] for tower, targets in towers.items())


@pytest.mark.parametrize('name', ['ViT-B/32', 'ViT-B/16', 'ViT-L/14'])
def test_architectures_have_the_published_sizes_and_lora_counts(name):
    arch = resolve_arch(name)
    towers = dict(vision=QKV, text=QKV)
    with torch.device('meta'):
        model = ViTLoRA(name, lora=dict(enabled=True, r=2, alpha=1, dropout=0.25, vision=dict(target_modules=QKV),
                                        text=dict(target_modules=QKV)))
    trainable, total = count_parameters(model)
    assert trainable == lora_params(arch, towers, 2)
    assert total - trainable == clip_params(arch)
    pinned = {'ViT-B/32': 151_277_313, 'ViT-B/16': 149_620_737}  # models.md section 3.3 (calc from OpenAI shapes)
    if name in pinned:
        assert total - trainable == pinned[name]
    if name == 'ViT-B/16':
        assert trainable == 184_320  # CLIP-LoRA's r=2 q/k/v both encoders, models.md section 3.1


def test_lora_goes_only_where_each_encoder_asks():
    lora = dict(enabled=True, r=4, alpha=8, vision=dict(target_modules=QKV + ['out_proj']), text=None)
    model = ViTLoRA(TINY, lora=lora)
    info = get_lora_info(model)
    arch = resolve_arch(TINY)
    assert info['per_encoder'] == dict(vision=lora_params(arch, dict(vision=QKV + ['out_proj']), 4), text=0)
    assert info['trainable_parameters'] == info['per_encoder']['vision']
    assert {row['name'].rsplit('.', 1)[1] for row in info['rows']} == {'q_proj', 'k_proj', 'v_proj', 'out_proj'}
    assert all(row['name'].startswith('vision_model.') for row in info['rows'])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all('.lora_A.' in n or '.lora_B.' in n for n in trainable)
    assert not any(p.requires_grad for p in model.text_model.parameters())
    # The seed's YAML spelling builds the same model.
    seed_form = dict(enabled=True, r=4, lora_alpha=8, target_modules=dict(vision_encoder=QKV + ['out_proj']))
    assert get_lora_info(ViTLoRA(TINY, lora=seed_form))['rows'] == info['rows']


def test_disabled_lora_trains_everything_and_layer_ranges_select_layers():
    model = ViTLoRA(TINY, lora=dict(enabled=False, r=2, vision=dict(target_modules=QKV)))
    assert not is_lora_enabled(model)
    assert count_parameters(model)[0] == count_parameters(model)[1]
    ranged = ViTLoRA(TINY, lora=dict(r=2, text=dict(target_modules=['encoder.layers.1.self_attn.v_proj'])))
    assert [row['name'] for row in get_lora_info(ranged)['rows']] == ['text_model.encoder.layers.1.self_attn.v_proj']


def test_lora_seed_fixes_the_initialisation():
    lora = dict(r=2, seed=7, vision=dict(target_modules=QKV), text=dict(target_modules=QKV))
    torch.manual_seed(0)
    a = get_parameters(ViTLoRA(TINY, lora=lora))
    torch.manual_seed(1)
    b = get_parameters(ViTLoRA(TINY, lora=lora))
    c = get_parameters(ViTLoRA(TINY, lora=dict(lora, seed=8)))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_fresh_lora_leaves_outputs_unchanged_and_get_set_round_trip():
    torch.manual_seed(0)
    base = ViTLoRA(TINY).eval()
    torch.manual_seed(0)  # same random base weights, LoRA on top (B = 0)
    model = ViTLoRA(TINY, lora=dict(r=2, dropout=0.5, vision=dict(target_modules=QKV),
                                    text=dict(target_modules=['out_proj']))).eval()
    images = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[62, 3, 4, 63, 0, 0], [62, 9, 8, 7, 6, 63]])
    with torch.no_grad():
        torch.testing.assert_close(model(images, ids)['logits_per_image'], base(images, ids)['logits_per_image'])
    params = get_parameters(model)
    assert len(params) == 2 * (2 * 3 + 2)  # A and B of 2 layers x (3 vision + 1 text) targets
    new = [np.random.default_rng(i).normal(size=p.shape).astype(np.float32) for i, p in enumerate(params)]
    model.set_parameters(new)
    assert all(np.array_equal(x, y) for x, y in zip(model.get_parameters(), new))
    with torch.no_grad():
        assert not torch.allclose(model(images, ids)['logits_per_image'], base(images, ids)['logits_per_image'])
    with pytest.raises(ValueError, match=r'lora_B\.default\.weight has shape \(3, 3\)'):
        set_parameters(model, new[:1] + [np.zeros((3, 3), np.float32)] + new[2:])
    with pytest.raises(ValueError, match='Expected 16 LoRA arrays, got 15'):
        set_parameters(model, new[:-1])
    assert all(np.array_equal(x, y) for x, y in zip(get_parameters(model), new))  # a rejected set changes nothing


def test_create_clip_model_from_the_seed_config():
    config = {'model_name': 'openai/clip-vit-base-patch32', 'lora': {
        'enabled': True, 'r': 8, 'lora_alpha': 16, 'lora_dropout': 0.05,
        'target_modules': {'vision_encoder': ['q_proj', 'v_proj', 'k_proj', 'out_proj']}}}
    with torch.device('meta'), pytest.warns(UserWarning, match="no 'pretrained' key, so the CLIP weights are RANDOM"):
        model = create_clip_model(config)
    assert model.arch == resolve_arch(CLIP_ARCHS['ViT-B/32'])
    assert model.is_lora_enabled()
    info = model.get_lora_info()
    assert info['trainable_parameters'] == 12 * 4 * 8 * 2 * 768
    assert {row['alpha'] for row in info['rows']} == {16} and {row['r'] for row in info['rows']} == {8}
    summary = get_model_summary(model)
    assert summary['total_parameters'] == 151_277_313 + info['trainable_parameters']
    assert summary['parts']['text_model']['trainable'] == 0
    assert summary['parts']['vision_model']['trainable'] == info['trainable_parameters']


def test_create_clip_model_makes_the_seed_gaps_explicit(recwarn):
    lora = dict(enabled=True, r=2, target_modules=dict(vision_encoder=QKV))
    # The seed's num_classes without class_names used to build a bare backbone silently.
    with pytest.raises(ValueError, match="num_classes=10 but no 'class_names'"):
        create_clip_model(dict(arch=TINY, num_classes=10, lora=lora, pretrained=None))
    model = create_clip_model(dict(arch=TINY, lora=lora, pretrained=None))  # random on purpose: no warning
    assert not [w for w in recwarn if 'pretrained' in str(w.message)]
    named = get_parameters_dict(model)
    assert list(named) == [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(named) == 2 * 3 * 2 and all('.lora_' in name for name in named)
    assert all(np.array_equal(a, b) for a, b in zip(named.values(), model.get_parameters()))
    assert model.get_parameters_dict().keys() == named.keys()


def test_bad_configs_raise_before_building():
    with pytest.raises(ValueError, match='Unknown CLIP architecture'):
        ViTLoRA('ViT-H/99')
    with pytest.raises(ValueError, match="Unknown keys \\['rank'\\]"):
        ViTLoRA(TINY, lora=dict(rank=4, vision=dict(target_modules=QKV)))
    with pytest.raises(ValueError, match='no encoder has target modules'):
        ViTLoRA(TINY, lora=dict(r=4, vision=dict(target_modules=[])))
    with pytest.raises(ValueError, match="target 'qkv' matches no module"):
        ViTLoRA(TINY, lora=dict(r=4, vision=dict(target_modules=['qkv'])))
    with pytest.raises(ValueError, match='Unknown encoder'):
        ViTLoRA(TINY, lora=dict(r=4, target_modules=dict(audio_encoder=QKV)))
    with pytest.raises(ValueError, match='end-of-text token id 63'):
        ViTLoRA(TINY).encode_text(torch.tensor([[62, 5, 6, 0]]))


@pytest.mark.parametrize('config, arch, trainable', [
    ('clip_lora_vit_b16_fewshot.py', 'ViT-B/16', 184_320),
    ('federated_vit_b32_fedavg.py', 'ViT-B/32', 12 * 4 * 8 * 2 * (768 + 512)),  # layers x targets x r x (A+B)
])
def test_full_size_configs_build_the_published_models(config, arch, trainable):
    from pathlib import Path

    from mmengine.config import Config
    cfg = Config.fromfile(str(Path(__file__).resolve().parents[3] / 'configs' / 'clip' / config))
    clip = dict(cfg.model.clip.to_dict(), pretrained=None)
    clip.pop('type')
    with torch.device('meta'):
        model = ViTLoRA(**clip)
    assert model.arch == resolve_arch(arch)
    assert count_parameters(model)[0] == trainable
