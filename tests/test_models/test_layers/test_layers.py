"""Shared transformer layers: maths against independent references, shapes, names."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from opentad_lora.models.layers import (Attention, DropPath, LayerScale, Mlp, PatchEmbed, TransformerBlock,
                                        checkpoint_call, checkpoint_seq, drop_path_rates, resize_pos_embed,
                                        sincos_1d, sincos_2d, sincos_3d)


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training():
    x = torch.randn(2000, 3, 4) + 5.0
    layer = DropPath(0.25)
    assert torch.equal(layer.eval()(x), x)
    out = layer.train()(x)
    kept = (out != 0).flatten(1).all(dim=1)
    dropped = (out == 0).flatten(1).all(dim=1)
    assert bool((kept | dropped).all()), 'a sample is either dropped entirely or kept entirely'
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert abs(kept.float().mean().item() - 0.75) < 0.04


def test_drop_path_rejects_bad_probability_and_rates_rise_linearly():
    with pytest.raises(ValueError, match='drop_prob'):
        DropPath(1.0)
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_mlp_names_and_maths():
    mlp = Mlp(8, hidden_features=16, out_features=4).eval()
    assert [n for n, _ in mlp.named_children()] == ['fc1', 'act', 'drop1', 'fc2', 'drop2']
    x = torch.randn(3, 8)
    ref = F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    torch.testing.assert_close(mlp(x), ref)


def _reference_attention(attn: Attention, x: torch.Tensor, mask=None) -> torch.Tensor:
    """Explicit softmax(q k^T / sqrt(d)) v with per-head q/k norms, written independently of SDPA."""
    b, n, c = x.shape
    h, d = attn.num_heads, c // attn.num_heads
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(b, n, 3, h, d).unbind(2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = torch.einsum('bnhd,bmhd->bhnm', q, k) / math.sqrt(d)
    if mask is not None:
        logits = logits.masked_fill(~mask, float('-inf'))
    out = torch.einsum('bhnm,bmhd->bnhd', logits.softmax(-1), v).reshape(b, n, c)
    return F.linear(out, attn.proj.weight, attn.proj.bias)


@pytest.mark.parametrize('qk_norm', [False, True])
def test_attention_matches_explicit_softmax_attention(qk_norm):
    attn = Attention(16, num_heads=4, qkv_bias=True, qk_norm=qk_norm).eval()
    if qk_norm:  # non-trivial norm parameters so the test sees them
        nn.init.normal_(attn.q_norm.weight)
        nn.init.normal_(attn.k_norm.bias)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(attn(x), _reference_attention(attn, x), atol=1e-5, rtol=1e-5)
    mask = torch.rand(5, 5) > 0.3
    mask.fill_diagonal_(True)
    torch.testing.assert_close(attn(x, attn_mask=mask), _reference_attention(attn, x, mask), atol=1e-5, rtol=1e-5)


def test_attention_rejects_indivisible_width():
    with pytest.raises(ValueError, match='divisible'):
        Attention(10, num_heads=4)


def test_patch_embed_equals_patch_matmul_and_padding_grid():
    embed = PatchEmbed(img_size=(8, 12), patch_size=4, in_chans=3, embed_dim=5)
    x = torch.randn(2, 3, 8, 12)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # B, C, rows, cols, 4, 4
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 6, 48)
    ref = patches @ embed.proj.weight.reshape(5, 48).T + embed.proj.bias
    torch.testing.assert_close(embed(x), ref, atol=1e-5, rtol=1e-5)
    assert embed.grid_size == (2, 3) and embed.num_patches == 6
    hamer = PatchEmbed(img_size=(256, 192), patch_size=16, padding=2, embed_dim=8)
    assert hamer.grid_size == (16, 12)
    assert hamer(torch.randn(1, 3, 256, 192)).shape == (1, 192, 8)


def test_sincos_1d_hand_computed_and_interleaved_layout():
    emb = sincos_1d(4, torch.tensor([0.0, 3.0]))
    ref = torch.tensor([[0, 0, 1, 1], [math.sin(3), math.sin(0.03), math.cos(3), math.cos(0.03)]])
    torch.testing.assert_close(emb, ref.float())
    # "Attention is all you need"/VideoMAE table: pos / 10000^(2*(j//2)/D), sin on even j, cos on odd j.
    pos, dim = torch.arange(7.0), 6
    angle = pos[:, None] / 10000 ** (2 * (torch.arange(dim) // 2) / dim)[None]
    table = torch.where(torch.arange(dim) % 2 == 0, angle.sin(), angle.cos())
    torch.testing.assert_close(sincos_1d(dim, pos, interleave=True), table.float())
    with pytest.raises(ValueError, match='even'):
        sincos_1d(5, pos)


def test_sincos_2d_and_3d_layouts():
    emb = sincos_2d(8, (2, 3))
    assert emb.shape == (6, 8)
    col = torch.tensor([0, 1, 2, 0, 1, 2])
    row = torch.tensor([0, 0, 0, 1, 1, 1])
    torch.testing.assert_close(emb[:, :4], sincos_1d(4, col))
    torch.testing.assert_close(emb[:, 4:], sincos_1d(4, row))
    emb3 = sincos_3d(32, (3, 2, 2)).reshape(3, 4, 32)
    torch.testing.assert_close(emb3[:, :, :8], sincos_1d(8, torch.arange(3))[:, None].expand(3, 4, 8))
    torch.testing.assert_close(emb3[1, :, 8:], sincos_2d(24, (2, 2)))


def test_resize_pos_embed_keeps_prefix_and_constant_fields():
    pos = torch.cat([torch.full((1, 1, 4), 7.0), torch.full((1, 9, 4), 2.0)], dim=1)
    out = resize_pos_embed(pos, (3, 3), (4, 5), num_prefix_tokens=1)
    assert out.shape == (1, 21, 4)
    torch.testing.assert_close(out[:, :1], pos[:, :1])
    torch.testing.assert_close(out[:, 1:], torch.full((1, 20, 4), 2.0))
    assert resize_pos_embed(pos, (3, 3), (3, 3), 1) is pos
    with pytest.raises(ValueError, match='grid tokens'):
        resize_pos_embed(pos, (2, 2), (3, 3), 1)


def _grads(module, x):
    torch.manual_seed(123)
    out = module(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize('every', [1, 2])
def test_checkpoint_seq_gives_identical_outputs_and_grads_with_dropout(every):
    blocks = nn.ModuleList([TransformerBlock(16, 2, proj_drop=0.2, drop_path=0.3) for _ in range(3)]).train()
    container = nn.Module()
    container.blocks = blocks
    x = torch.randn(4, 5, 16, requires_grad=False)
    container.forward = lambda inp: checkpoint_seq(blocks, inp, enabled=False)
    plain_out, plain_grads = _grads(container, x)
    container.forward = lambda inp: checkpoint_seq(blocks, inp, enabled=True, every=every)
    cp_out, cp_grads = _grads(container, x)
    assert torch.equal(plain_out, cp_out)
    for a, b in zip(plain_grads, cp_grads):
        torch.testing.assert_close(a, b)


def test_checkpoint_call_passes_kwargs_and_skips_without_grad():
    block = TransformerBlock(8, 2).eval()
    x = torch.randn(1, 3, 8)
    mask = torch.ones(3, 3, dtype=torch.bool)
    torch.testing.assert_close(checkpoint_call(block, x, attn_mask=mask), block(x, attn_mask=mask))
    with torch.no_grad():
        assert checkpoint_call(block, x).grad_fn is None


def test_transformer_block_names_and_layer_scale():
    block = TransformerBlock(8, 2, init_values=0.5)
    names = {n for n, _ in block.named_parameters()}
    assert {'norm1.weight', 'attn.qkv.weight', 'attn.proj.weight', 'norm2.weight', 'mlp.fc1.weight',
            'mlp.fc2.weight', 'ls1.gamma', 'ls2.gamma'} <= names
    assert isinstance(block.ls1, LayerScale) and torch.equal(block.ls1.gamma, torch.full((8, ), 0.5))
    block.eval()
    x = torch.randn(2, 3, 8)
    h = x + 0.5 * block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), h + 0.5 * block.mlp(block.norm2(h)))


def test_compiled_blocks_of_different_drop_path_rates_share_one_graph():
    """The rate is a buffer under compile (a float attribute would be a graph constant: one graph per rate); compiled
    drop path still drops whole samples and rescales the kept ones; eager draws are unchanged (checked above)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    layers = [DropPath(rate).train() for rate in (0.1, 0.2, 0.3, 0.4, 0.5)]
    for layer in layers:
        layer.compile(backend='aot_eager', fullgraph=True)
    x = torch.randn(400, 3) + 5.0
    layers[-1].half()  # the rate is not rounded with the model's dtype
    for layer in layers:
        out = layer(x)
        kept = (out != 0).all(dim=1)
        torch.testing.assert_close(out[kept], x[kept] / (1.0 - layer.drop_prob), rtol=3e-7, atol=0)  # not 1e-4 off
        assert bool(((out == 0).all(dim=1) | kept).all())
        assert abs(kept.float().mean().item() - (1.0 - layer.drop_prob)) < 0.1
    assert counters['stats']['unique_graphs'] == 1  # the rate is an input of the graph
    assert torch.equal(layers[0].eval()(x), x) and not layers[0].state_dict()
