"""``Conv1DTransformerProj``: conv embedding + transformer stem + downsampling transformer branch (ActionFormer)."""
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opentad_lora.registry import MODELS

from ..layers import TransformerBlock, drop_path_rates, sincos_1d
from .blocks import ConvNormAct


def attention_mask(mask: Tensor, window: int) -> Tensor:
    """SDPA boolean mask ``(B, 1, T, T)``: attend to valid keys, within ``window`` steps when ``window > 0``.

    Args:
        mask: ``(B, T)`` validity of the time steps.
        window: Full width of the local attention window (ActionFormer's ``n_mha_win_size``); ``-1`` is global.
    """
    allowed = mask[:, None, None, :]
    if window > 0:
        steps = torch.arange(mask.shape[1], device=mask.device)
        allowed = allowed & ((steps[:, None] - steps[None, :]).abs() <= window // 2)[None, None]
    return allowed


@MODELS.register_module()
class Conv1DTransformerProj(nn.Module):
    """Turn backbone features ``(B, C_in, T)`` into a pyramid of ``arch[2] + 1`` temporal feature maps.

    ``arch = (embed, stem, branch)``: ``embed`` masked conv + LayerNorm + ReLU layers, ``stem`` transformer blocks
    at full resolution, then ``branch`` blocks each preceded by a stride-2 max-pool; the stem output and every branch
    output form the pyramid. Arguments follow OpenTAD's config keys so its model configs carry over.

    Args:
        in_channels: Backbone feature width.
        out_channels: Pyramid width.
        arch: ``(embed, stem, branch)`` layer counts.
        conv_cfg: ``dict(kernel_size=3, proj_pdrop=0.0)``; ``proj_pdrop`` is the dropout inside the blocks.
        norm_cfg: ``dict(type='LN')`` (LayerNorm after each embedding conv) or None.
        attn_cfg: ``dict(n_head=4, n_mha_win_size=-1)``; a window > 0 makes the attention local.
        path_pdrop: Stochastic depth of the transformer blocks (rising linearly to this value).
        use_abs_pe: Add a sin-cos position embedding after the embedding convs.
        max_seq_len: Longest input the model is configured for (checked when given).
        input_pdrop: Channel dropout on the input features.
        mlp_ratio: Transformer MLP width as a multiple of ``out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, arch: Sequence[int] = (2, 2, 5),
                 conv_cfg: Optional[dict] = None, norm_cfg: Optional[dict] = None, attn_cfg: Optional[dict] = None,
                 path_pdrop: float = 0.0, use_abs_pe: bool = False, max_seq_len: Optional[int] = None,
                 input_pdrop: float = 0.0, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        conv_cfg = {'kernel_size': 3, 'proj_pdrop': 0.0, **(conv_cfg or {})}
        attn_cfg = {'n_head': 4, 'n_mha_win_size': -1, **(attn_cfg or {})}
        if norm_cfg is not None and norm_cfg.get('type') != 'LN':
            raise ValueError(f'Conv1DTransformerProj supports norm_cfg=dict(type="LN") or None, got {norm_cfg}')
        if len(arch) != 3:
            raise ValueError(f'arch must be (embed, stem, branch) layer counts, got {arch}')
        self.arch = tuple(int(a) for a in arch)
        self.window = int(attn_cfg['n_mha_win_size'])
        self.use_abs_pe = use_abs_pe
        self.max_seq_len = max_seq_len
        self.input_drop = nn.Dropout1d(input_pdrop) if input_pdrop > 0 else nn.Identity()
        self.embed = nn.ModuleList([
            ConvNormAct(in_channels if i == 0 else out_channels, out_channels, conv_cfg['kernel_size'],
                        with_norm=norm_cfg is not None) for i in range(self.arch[0])])
        if self.arch[0] == 0 and in_channels != out_channels:
            raise ValueError('arch[0] == 0 needs in_channels == out_channels')
        rates = drop_path_rates(path_pdrop, self.arch[1] + self.arch[2])
        self.stem = nn.ModuleList([
            TransformerBlock(out_channels, attn_cfg['n_head'], mlp_ratio=mlp_ratio, proj_drop=conv_cfg['proj_pdrop'],
                             drop_path=rates[i]) for i in range(self.arch[1])])
        self.branch = nn.ModuleList([
            TransformerBlock(out_channels, attn_cfg['n_head'], mlp_ratio=mlp_ratio, proj_drop=conv_cfg['proj_pdrop'],
                             drop_path=rates[self.arch[1] + i]) for i in range(self.arch[2])])

    @property
    def num_levels(self) -> int:
        return self.arch[2] + 1

    def _blocks(self, blocks: Iterable[nn.Module], x: Tensor, mask: Tensor) -> Tensor:
        """Run transformer ``blocks`` over the time steps of ``x`` (B, C, T); re-zero padded steps."""
        tokens = x.transpose(1, 2)
        attn = attention_mask(mask, self.window)
        for block in blocks:
            tokens = block(tokens, attn_mask=attn)
        return tokens.transpose(1, 2) * mask[:, None].to(x.dtype)

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """Pyramid of ``(B, C, T / 2^l)`` features and their ``(B, T / 2^l)`` masks."""
        if self.max_seq_len is not None and x.shape[-1] > self.max_seq_len:
            raise ValueError(f'input length {x.shape[-1]} exceeds max_seq_len={self.max_seq_len}')
        x = self.input_drop(x) * mask[:, None].to(x.dtype)
        for layer in self.embed:
            x, mask = layer(x, mask)
        if self.use_abs_pe:
            pe = sincos_1d(x.shape[1], torch.arange(x.shape[-1], device=x.device)).to(x)
            x = x + pe.t()[None] * mask[:, None].to(x.dtype)
        x = self._blocks(self.stem, x, mask)
        feats, masks = [x], [mask]
        for block in self.branch:
            x = F.max_pool1d(x, kernel_size=3, stride=2, padding=1)
            mask = mask[:, ::2]
            x = self._blocks([block], x, mask)
            feats.append(x)
            masks.append(mask)
        return feats, masks
