"""OpenAI and HF CLIP checkpoints: every key mapped, identical outputs for the same weights."""
import pytest
import torch
from openai_reference import OpenAICLIP, randomize_
from safetensors.torch import save_file

from opentad_lora.models.clip import ViTLoRA, convert_clip_state_dict, ours_to_openai, read_clip_checkpoint

ARCH = dict(embed_dim=16, vision=dict(image_size=32, patch_size=8, width=32, layers=2, heads=4),
            text=dict(context_length=12, vocab_size=64, width=24, layers=2, heads=2))


def openai_reference() -> OpenAICLIP:
    v, t = ARCH['vision'], ARCH['text']
    return randomize_(OpenAICLIP(ARCH['embed_dim'], v['image_size'], v['patch_size'], v['width'], v['layers'],
                                 v['heads'], t['context_length'], t['vocab_size'], t['width'], t['layers'],
                                 t['heads'])).eval()


def inputs():
    """Two images and two token rows ``[sot, words..., eot, 0...]`` with the end token (the largest id) at
    different positions."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    ids = torch.zeros(2, 12, dtype=torch.long)
    ids[0, :6] = torch.tensor([62, 5, 9, 17, 33, 63])
    ids[1, :10] = torch.tensor([62, 40, 2, 2, 8, 51, 7, 30, 11, 63])
    return images, ids


def test_openai_checkpoint_maps_every_key_and_gives_identical_outputs(tmp_path):
    ref = openai_reference()
    state = ref.state_dict()
    torch.save(state, tmp_path / 'openai.pth')
    model = ViTLoRA(ARCH, pretrained=str(tmp_path / 'openai.pth')).eval()
    # Every OpenAI tensor lands in exactly one model tensor (3 per fused in_proj) and every model tensor is filled.
    converted = convert_clip_state_dict(state)
    assert set(converted) == set(model.state_dict())
    n_fused = sum(k.endswith(('in_proj_weight', 'in_proj_bias')) for k in state)
    assert len(converted) == len(state) + 2 * n_fused
    images, ids = inputs()
    with torch.no_grad():
        ref_image, ref_text = ref(images, ids)
        torch.testing.assert_close(model.encode_image(images), ref_image, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text(ids), ref_text, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.logit_scale, state['logit_scale'])


def test_openai_export_round_trips_exactly():
    state = openai_reference().state_dict()
    back = ours_to_openai(convert_clip_state_dict(state, 'openai'))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')
def test_openai_torchscript_archive_is_read(tmp_path):
    ref = openai_reference()
    traced = torch.jit.trace(ref, inputs(), check_trace=False)
    traced.save(str(tmp_path / 'ViT-tiny.pt'))
    loaded = read_clip_checkpoint(tmp_path / 'ViT-tiny.pt')
    assert set(loaded) == set(ref.state_dict())
    model = ViTLoRA(ARCH, pretrained=str(tmp_path / 'ViT-tiny.pt')).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(inputs()[0]), ref.encode_image(inputs()[0]))


def hf_reference():
    transformers = pytest.importorskip('transformers')
    v, t = ARCH['vision'], ARCH['text']
    config = transformers.CLIPConfig(
        projection_dim=ARCH['embed_dim'],
        vision_config=dict(hidden_size=v['width'], intermediate_size=4 * v['width'], num_hidden_layers=v['layers'],
                           num_attention_heads=v['heads'], image_size=v['image_size'], patch_size=v['patch_size']),
        text_config=dict(hidden_size=t['width'], intermediate_size=4 * t['width'], num_hidden_layers=t['layers'],
                         num_attention_heads=t['heads'], max_position_embeddings=t['context_length'],
                         vocab_size=t['vocab_size'], bos_token_id=62, eos_token_id=63, pad_token_id=0))
    return randomize_(transformers.CLIPModel(config)).eval()


def test_hf_checkpoint_loads_unchanged_and_gives_identical_outputs(tmp_path):
    ref = hf_reference()
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(tmp_path / 'model.safetensors'))
    model = ViTLoRA(ARCH, pretrained=str(tmp_path / 'model.safetensors')).eval()
    assert set(model.state_dict()) == set(state)
    images, ids = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), ref.get_image_features(pixel_values=images)
                                   .pooler_output, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text(ids), ref.get_text_features(input_ids=ids).pooler_output,
                                   rtol=1e-5, atol=1e-5)


def test_openai_and_hf_layouts_of_the_same_weights_give_the_same_model(tmp_path):
    state = openai_reference().state_dict()
    torch.save(state, tmp_path / 'openai.pth')
    hf_state = convert_clip_state_dict(state)  # our names are HF's
    hf_state['text_model.embeddings.position_ids'] = torch.arange(12)[None]  # saved by older transformers
    torch.save(hf_state, tmp_path / 'hf.bin')
    a = ViTLoRA(ARCH, pretrained=str(tmp_path / 'openai.pth')).state_dict()
    b = ViTLoRA(ARCH, pretrained=str(tmp_path / 'hf.bin'), checkpoint_layout='hf').state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_checkpoints_are_named(tmp_path):
    state = openai_reference().state_dict()
    torch.save(dict(state, **{'visual.extra_head.weight': torch.zeros(2)}), tmp_path / 'extra.pth')
    with pytest.raises(KeyError, match='visual.extra_head.weight'):
        ViTLoRA(ARCH, pretrained=str(tmp_path / 'extra.pth'))
    torch.save(state, tmp_path / 'openai.pth')
    wider = dict(ARCH, embed_dim=8)
    with pytest.raises(ValueError, match=r'openai\.pth.*visual_projection\.weight: file \(16, 32\) vs model \(8, 32\)'):
        ViTLoRA(wider, pretrained=str(tmp_path / 'openai.pth'))
    torch.save({'visual.layer1.0.conv1.weight': torch.zeros(1), 'visual.attnpool.c_proj.weight': torch.zeros(1)},
               tmp_path / 'rn50.pth')
    with pytest.raises(ValueError, match='ResNet'):
        ViTLoRA(ARCH, pretrained=str(tmp_path / 'rn50.pth'))
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        ViTLoRA(ARCH, pretrained=str(tmp_path / 'missing.pth'))
