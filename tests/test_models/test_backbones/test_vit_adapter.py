"""VisionTransformerAdapter / VisionTransformerQLoRA: shapes, what trains, zero-init, chunking, checkpointing, QLoRA."""
import numpy as np
import pytest
import torch

from opentad_lora.models.backbones.video_vit import ARCHS, resize_video_pos_embed, videomae_sincos_table
from opentad_lora.models.backbones.vit_adapter import VisionTransformerAdapter, VisionTransformerQLoRA
from opentad_lora.peft import iter_lora_layers
from opentad_lora.peft.quant import dequantize_weight, is_quantized
from opentad_lora.registry import MODELS

# Tiny VideoMAE: 32x32 frames -> 2x2 patches, chunks of 8 frames -> 4 steps, a 16-frame window = 2 chunks.
TINY = dict(img_size=32, patch_size=16, embed_dims=32, depth=2, num_heads=2, num_frames=8, tubelet_size=2,
            total_frames=16, drop_path_rate=0.0)


def video(batch: int = 2, frames: int = 16, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size)


@pytest.fixture
def vit_file(tmp_path):
    """A pretrained file in our layout holding a random tiny ViT (no adapters), as the converter writes it."""
    vit = VisionTransformerAdapter(**TINY, adapter_index=[])
    for param in vit.parameters():  # non-trivial norms and biases
        param.data.add_(0.05 * torch.randn_like(param))
    path = tmp_path / 'vit.pth'
    torch.save(dict(state_dict=vit.state_dict()), path)
    return str(path)


def randomize_adapters(model: torch.nn.Module) -> None:
    for name, param in model.named_parameters():
        if 'adapter' in name.split('.'):
            param.data.normal_(0, 0.2)


def trainable(model: torch.nn.Module) -> set:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_output_shape_and_only_adapters_train():
    model = MODELS.build(dict(type='VisionTransformerAdapter', **TINY))
    out = model(video())
    assert out.shape == (2, 32, 8)  # (B, embed_dims, T // tubelet)
    names = trainable(model)
    assert names and all('.adapter.' in n for n in names)
    assert {n.split('.adapter.')[1] for n in names} == {
        'down_proj.weight', 'down_proj.bias', 'up_proj.weight', 'up_proj.bias', 'dwconv.weight', 'dwconv.bias',
        'conv.weight', 'conv.bias', 'gamma'}
    out.square().mean().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == names
    plain = VisionTransformerAdapter(**TINY, use_plain_adapter=True, adapter_index=[1])
    assert {n.split('.adapter.')[1] for n in trainable(plain)} == {
        'down_proj.weight', 'down_proj.bias', 'up_proj.weight', 'up_proj.bias', 'gamma'}
    assert all(n.startswith('blocks.1.') for n in trainable(plain))


def test_arch_preset_overrides_the_size_arguments(monkeypatch):
    monkeypatch.setitem(ARCHS, 'test', dict(embed_dims=48, depth=3, num_heads=3, mlp_ratio=2, patch_size=8))
    model = VisionTransformerAdapter(arch='test', embed_dims=8, depth=1, img_size=32, total_frames=None,
                                     adapter_index=[2])
    assert (model.embed_dims, len(model.blocks), model.blocks[0].attn.num_heads) == (48, 3, 3)
    assert model.blocks[0].mlp.fc1.out_features == 96 and model.patch_embed.proj.kernel_size == (2, 8, 8)
    assert model.blocks[2].adapter is not None and model.blocks[1].adapter is None
    assert model(video(batch=1, frames=16)).shape == (1, 48, 8)
    with pytest.raises(ValueError, match='Unknown arch'):
        VisionTransformerAdapter(arch='tiny')


def test_zero_init_adapters_leave_pretrained_output_unchanged(vit_file):
    frozen = VisionTransformerAdapter(**TINY, adapter_index=[], pretrained=vit_file).eval()
    adapted = VisionTransformerAdapter(**TINY, pretrained=vit_file).eval()
    x = video()
    with torch.no_grad():
        reference = frozen(x)
        assert torch.equal(adapted(x), reference)
        randomize_adapters(adapted)
        assert not torch.allclose(adapted(x), reference, atol=1e-3)


@pytest.mark.parametrize('plain', [False, True])
def test_temporal_conv_mixes_across_chunk_boundaries(plain):
    model = VisionTransformerAdapter(**TINY, use_plain_adapter=plain).eval()
    x = video(batch=1)
    moved = x.clone()
    moved[:, :, 8:] += 1.0  # perturb chunk 1 (frames 8..15) only
    with torch.no_grad():
        # zero-init adapters: the chunks are independent, chunk 0's features (steps 0..3) cannot change
        assert torch.equal(model(x)[..., :4], model(moved)[..., :4])
        randomize_adapters(model)
        before, after = model(x), model(moved)
    assert not torch.allclose(before[..., 4:], after[..., 4:], atol=1e-3)
    if plain:  # no temporal conv: still no path between chunks
        assert torch.equal(before[..., :4], after[..., :4])
    else:  # the temporal conv spans the whole window
        assert (before[..., :4] - after[..., :4]).abs().max() > 1e-3


def test_temporal_adapter_conv_runs_per_video_over_the_whole_window():
    """Two videos in a batch never mix, and batching equals running each video alone."""
    model = VisionTransformerAdapter(**TINY).eval()
    randomize_adapters(model)
    x = video(batch=2)
    with torch.no_grad():
        joint = model(x)
        alone = torch.cat([model(x[:1]), model(x[1:])])
    torch.testing.assert_close(joint, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('bits', [None, 4, 8])
def test_with_cp_gives_equal_outputs_and_grads(vit_file, bits):
    kwargs = dict(TINY, drop_path_rate=0.2, pretrained=vit_file)
    if bits is None:
        models = [VisionTransformerAdapter(**kwargs, with_cp=cp) for cp in (True, False)]
    else:
        models = [VisionTransformerQLoRA(**kwargs, with_cp=cp, quantize_bits=bits, lora_dropout=0.1)
                  for cp in (True, False)]
    torch.manual_seed(1)
    randomize_adapters(models[0])
    for _, layer in iter_lora_layers(models[0]):
        layer.lora_B['default'].weight.data.normal_(0, 0.1)
    # both bases come from the same file; copy what differs (random adapters, LoRA init)
    models[1].load_state_dict({n: p for n, p in models[0].named_parameters() if p.requires_grad}, strict=False)
    x = video()
    outs, grads, mlp_calls = [], [], []
    for model in models:
        calls = []
        model.blocks[0].mlp.register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(123)  # same drop-path / dropout masks in both runs
        out = model(x)
        out.square().mean().backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        mlp_calls.append(len(calls))
    assert mlp_calls == [2, 1]  # with_cp recomputes the block in backward
    torch.testing.assert_close(outs[0], outs[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize('bits, tolerance', [(4, 0.15), (8, 0.01)])
def test_qlora_trains_only_adapters_and_lora_within_quantization_error(vit_file, bits, tolerance):
    x = video()
    float_model = VisionTransformerAdapter(**TINY, pretrained=vit_file)
    qlora = VisionTransformerQLoRA(**TINY, pretrained=vit_file, quantize_bits=bits, lora_dropout=0.0)
    wrapped = dict(iter_lora_layers(qlora))
    assert sorted(wrapped) == sorted(f'blocks.{i}.{m}' for i in range(2)
                                     for m in ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2'))
    assert all(is_quantized(layer.base_layer) for layer in wrapped.values())
    names = trainable(qlora)
    assert names == {n for n in names if '.adapter.' in n or '.lora_' in n}
    assert any('.lora_A.' in n for n in names) and any('.adapter.' in n for n in names)

    # The same model with the dequantized weights in float: 4-bit computes exactly with them, int8 nearly.
    dequantized = VisionTransformerAdapter(**TINY, pretrained=vit_file)
    state = dequantized.state_dict()
    state.update({f'{name}.weight': dequantize_weight(layer.base_layer) for name, layer in wrapped.items()})
    dequantized.load_state_dict(state)
    out = qlora(x)  # train mode (eval mode on CPU may switch bitsandbytes to a packed bf16 kernel)
    with torch.no_grad():
        exact = dequantized(x)
        reference = float_model(x)
    torch.testing.assert_close(out, exact, rtol=0, atol=1e-4 if bits == 4 else 5e-3)
    relative = ((out - reference).norm() / reference.norm()).item()
    assert 0 < relative < tolerance

    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in qlora.named_parameters() if p.grad is not None}
    assert grads.keys() == names
    assert all(grads[n].abs().sum() > 0 for n in names if '.lora_B.' in n)
    with torch.no_grad():  # a validation pass in between leaves training unchanged (bitsandbytes' CPU kernels)
        torch.testing.assert_close(qlora.eval()(x), out.detach())
    qlora.train().zero_grad()
    qlora(x).square().mean().backward()
    for name, grad in grads.items():
        torch.testing.assert_close(qlora.get_parameter(name).grad, grad, msg=name)


def test_lora_targets_exclude_patch_embed_and_adapters():
    model = VisionTransformerQLoRA(**TINY, quantize_bits=None, lora_targets=['re:.*proj'])
    assert sorted(name for name, _ in iter_lora_layers(model)) == ['blocks.0.attn.proj', 'blocks.1.attn.proj']
    with pytest.raises(ValueError, match='lora_cfg sets'):
        VisionTransformerQLoRA(**TINY, lora_cfg=dict(r=4))


def test_position_table_is_videomae_and_resamples_per_step():
    # VideoMAE's numpy formula: angle(pos, j) = pos / 10000^(2 * (j // 2) / d); sin on even j, cos on odd j.
    tokens, dims = 50, 12
    angles = np.array([[p / np.power(10000, 2 * (j // 2) / dims) for j in range(dims)] for p in range(tokens)])
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    table = videomae_sincos_table(tokens, dims)
    np.testing.assert_allclose(table[0].numpy(), angles, atol=1e-6)
    table = videomae_sincos_table(2 * 4 * 4, dims)
    resized = resize_video_pos_embed(table, 2, (4, 4), (2, 2))
    assert resized.shape == (1, 2 * 2 * 2, dims)
    pooled = torch.nn.functional.interpolate(table.reshape(2, 4, 4, dims).permute(0, 3, 1, 2), size=(2, 2),
                                             mode='bicubic', align_corners=False)
    torch.testing.assert_close(resized, pooled.permute(0, 2, 3, 1).reshape(1, -1, dims))


def test_runs_on_frames_larger_than_pretraining():
    model = VisionTransformerAdapter(**dict(TINY, img_size=32)).eval()
    with torch.no_grad():
        assert model(video(batch=1, size=64)).shape == (1, 32, 8)


def test_bad_input_and_bad_checkpoints_raise_clear_errors(tmp_path, vit_file):
    model = VisionTransformerAdapter(**TINY)
    with pytest.raises(ValueError, match='window of 24 frames'):
        model(video(frames=24))
    with pytest.raises(ValueError, match=r'expects \(B, 3'):
        model(torch.randn(2, 16, 32, 32))
    state = torch.load(vit_file, weights_only=True)['state_dict']
    cases = {
        'missing keys': {k: v for k, v in state.items() if not k.startswith('blocks.1.mlp')},
        'unknown keys': {**state, 'blocks.0.attn.scale': torch.zeros(1)},
        'shape mismatches': {**state, 'blocks.0.attn.q_bias': torch.zeros(5)},
        'use_learnable_pos_emb': {**state, 'pos_embed': torch.zeros(1, 16, 32)},
    }
    for message, bad in cases.items():
        path = tmp_path / 'bad.pth'
        torch.save(bad, path)
        with pytest.raises(ValueError, match=message) as err:
            VisionTransformerAdapter(**TINY, pretrained=str(path))
        assert str(path) in str(err.value)
    torch.save({**state, 'fc_norm.weight': torch.ones(32), 'fc_norm.bias': torch.zeros(32)}, tmp_path / 'fc.pth')
    VisionTransformerAdapter(**TINY, pretrained=str(tmp_path / 'fc.pth'))  # an unused final norm is skipped
