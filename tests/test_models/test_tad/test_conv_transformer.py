"""The ActionFormer projection: masked conv attention and its block against direct sums, and OpenTAD's key names."""
import math

import pytest
import torch
import torch.nn.functional as F

from opentad_lora.models.tad import Conv1DTransformerProj, FPNIdentity
from opentad_lora.models.tad.transformer import ConvTransformerBlock, MaskedConvAttention


def randomise(module: torch.nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


def norm(layer, x):
    return F.layer_norm(x.transpose(1, 2), (x.shape[1], ), layer.weight, layer.bias, layer.eps).transpose(1, 2)


def reference_attention(attn: MaskedConvAttention, x, valid: int, stride: int, window: int):
    """Loop over queries and heads: depth-wise conv -> zero padded steps -> LN -> 1x1 conv, softmax over the
    allowed keys, weighted sum of values, output projection; zero at padded query steps."""
    def branch(conv, ln, lin):
        y = F.conv1d(x, conv.conv.weight, None, stride=stride, padding=conv.conv.padding[0], groups=x.shape[1])
        keep = (torch.arange(y.shape[-1]) * stride < valid).float()
        return F.conv1d(norm(ln, y * keep), lin.weight, lin.bias), keep

    q, keep = branch(attn.query_conv, attn.query_norm, attn.query)
    k, _ = branch(attn.key_conv, attn.key_norm, attn.key)
    v, _ = branch(attn.value_conv, attn.value_norm, attn.value)
    channels, length = q.shape[1], q.shape[2]
    d = channels // attn.num_heads
    out = torch.zeros(channels, length)
    for i in range(length):
        if not keep[i]:
            continue
        keys = [j for j in range(length) if keep[j] and (window <= 1 or abs(i - j) <= window // 2)]
        for h in range(attn.num_heads):
            rows = slice(h * d, (h + 1) * d)
            scores = torch.stack([q[0, rows, i] @ k[0, rows, j] / math.sqrt(d) for j in keys])
            out[rows, i] = (scores.softmax(0)[None] * v[0, rows][:, keys]).sum(1)
    return F.conv1d(out[None], attn.proj.weight, attn.proj.bias) * keep, keep.bool()


@pytest.mark.parametrize('stride,window', [(1, -1), (1, 3), (2, -1), (2, 5)])
def test_masked_conv_attention_matches_a_direct_computation(stride, window):
    attn = MaskedConvAttention(8, num_heads=2, stride=stride, window_size=window).eval()
    randomise(attn)
    x, valid = torch.randn(1, 8, 10), 7
    out, mask = attn(x, torch.arange(10)[None] < valid)
    expected, expected_mask = reference_attention(attn, x, valid, stride, window)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert mask[0].tolist() == expected_mask.tolist() and out.shape[-1] == 10 // stride


def test_block_is_pre_norm_residual_with_layer_scale_and_pooled_skip():
    block = ConvTransformerBlock(8, num_heads=2, stride=2, window_size=-1, path_pdrop=0.3).eval()
    randomise(block)
    x, mask = torch.randn(1, 8, 10), torch.arange(10)[None] < 7
    out, out_mask = block(x, mask)
    attn, attn_mask = block.attn(norm(block.ln1, x), mask)
    keep = attn_mask[:, None].float()
    skip = F.max_pool1d(x, kernel_size=3, stride=2, padding=1)  # the skip path is halved like the attention
    y = skip * keep + block.drop_path_attn.scale * attn
    mlp = block.mlp[3](F.gelu(block.mlp[0](norm(block.ln2, y))))
    torch.testing.assert_close(out, y + block.drop_path_mlp.scale * mlp * keep)
    assert torch.equal(out_mask, attn_mask) and out_mask[0].tolist() == [True] * 4 + [False]


def test_drop_path_rate_is_the_same_in_every_block_and_scales_start_small():
    proj = Conv1DTransformerProj(8, 8, arch=(1, 2, 3), attn_cfg=dict(n_head=2), path_pdrop=0.2, max_seq_len=16)
    rates = [b.drop_path_attn.drop_prob for b in [*proj.stem, *proj.branch]]
    assert rates == [0.2] * 5
    assert torch.all(proj.stem[0].drop_path_mlp.scale == 1e-4)
    no_drop = Conv1DTransformerProj(8, 8, arch=(1, 1, 1), attn_cfg=dict(n_head=2), path_pdrop=0.0, max_seq_len=16)
    assert not any('drop_path' in key for key in no_drop.state_dict())  # no layer scale without drop path


def test_pyramid_halves_each_level_and_masks_padding():
    proj = Conv1DTransformerProj(6, 8, arch=(2, 1, 2), attn_cfg=dict(n_head=2, n_mha_win_size=[3, 3, -1]),
                                 norm_cfg=dict(type='LN'), use_abs_pe=True, max_seq_len=12).eval()
    feats, masks = proj(torch.randn(2, 6, 12), torch.arange(12)[None] < torch.tensor([[12], [5]]))
    assert [f.shape[-1] for f in feats] == [12, 6, 3] and [m.shape[-1] for m in masks] == [12, 6, 3]
    assert masks[1][1].tolist() == [True] * 3 + [False] * 3 and masks[2][1].tolist() == [True, True, False]
    assert all(torch.all(f[1][:, ~m[1]] == 0) for f, m in zip(feats, masks))


# Parameter names OpenTAD's ActionFormer gives a projection of arch (1, 1, 1) with drop path and a 2-level neck.
OPENTAD_PROJECTION_KEYS = ['embed.0.conv.weight', 'embed.0.norm.weight', 'embed.0.norm.bias'] + [
    f'{block}.{name}' for block in ('stem.0', 'branch.0') for name in (
        'ln1.weight', 'ln1.bias', 'ln2.weight', 'ln2.bias',
        'attn.query_conv.conv.weight', 'attn.query_norm.weight', 'attn.query_norm.bias',
        'attn.key_conv.conv.weight', 'attn.key_norm.weight', 'attn.key_norm.bias',
        'attn.value_conv.conv.weight', 'attn.value_norm.weight', 'attn.value_norm.bias',
        'attn.key.weight', 'attn.key.bias', 'attn.query.weight', 'attn.query.bias',
        'attn.value.weight', 'attn.value.bias', 'attn.proj.weight', 'attn.proj.bias',
        'mlp.0.weight', 'mlp.0.bias', 'mlp.3.weight', 'mlp.3.bias',
        'drop_path_attn.scale', 'drop_path_mlp.scale')]


def test_state_dict_keys_are_opentads():
    proj = Conv1DTransformerProj(6, 8, arch=(1, 1, 1), attn_cfg=dict(n_head=2), norm_cfg=dict(type='LN'),
                                 path_pdrop=0.1, use_abs_pe=True, max_seq_len=16)
    assert sorted(proj.state_dict()) == sorted(OPENTAD_PROJECTION_KEYS)  # the position table is not saved
    neck = FPNIdentity(8, 8, num_levels=2)
    assert sorted(neck.state_dict()) == ['fpn_norms.0.bias', 'fpn_norms.0.weight', 'fpn_norms.1.bias',
                                         'fpn_norms.1.weight']
    assert neck.fpn_norms[0].eps == 1e-6 and proj.embed[0].norm.eps == 1e-6 and proj.stem[0].ln1.eps == 1e-5


def test_absolute_position_table_is_interleaved_sin_cos_over_sqrt_width():
    proj = Conv1DTransformerProj(4, 4, arch=(0, 0, 0), use_abs_pe=True, max_seq_len=6).eval()
    x, mask = torch.zeros(1, 4, 6), torch.arange(6)[None] < 5
    (out, ), _ = proj(x, mask)
    t = torch.arange(6.0)
    expected = torch.stack([torch.sin(t), torch.cos(t), torch.sin(t / 100), torch.cos(t / 100)]) / 2  # sqrt(4)
    torch.testing.assert_close(out[0], expected * (t < 5))
