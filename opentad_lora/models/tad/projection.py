"""``Conv1DTransformerProj``: conv embedding + transformer stem + downsampling transformer branch (ActionFormer)."""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opentad_lora.registry import MODELS

from ..layers import sincos_1d
from .blocks import ConvNormAct
from .transformer import ConvTransformerBlock


@MODELS.register_module()
class Conv1DTransformerProj(nn.Module):
    """Turn backbone features ``(B, C_in, T)`` into a pyramid of ``arch[2] + 1`` temporal feature maps.

    ``arch = (embed, stem, branch)``: ``embed`` masked conv (+ LayerNorm) + ReLU layers, ``stem`` conv-attention
    transformer blocks at full resolution, then ``branch`` blocks that each halve the length; the stem output and
    every branch output form the pyramid. Arguments and parameter names are OpenTAD's.

    Args:
        in_channels: Backbone feature width.
        out_channels: Pyramid width.
        arch: ``(embed, stem, branch)`` layer counts.
        conv_cfg: ``dict(kernel_size=3, proj_pdrop=0.0)``; ``proj_pdrop`` is the dropout inside the blocks.
        norm_cfg: ``dict(type='LN')`` (LayerNorm after each embedding conv) or None.
        attn_cfg: ``dict(n_head=4, n_mha_win_size=-1)``; the window is one int or one per level, ``<= 1`` global.
        path_pdrop: Stochastic depth of every transformer block (the same rate for all).
        use_abs_pe: Add a sin-cos position embedding (scaled by ``1/sqrt(C)``) after the embedding convs.
        max_seq_len: Length the detector pads shorter inputs to; also the position table's length.
        input_pdrop: Channel dropout on the input features.
    """

    def __init__(self, in_channels: int, out_channels: int, arch: Sequence[int] = (2, 2, 5),
                 conv_cfg: Optional[dict] = None, norm_cfg: Optional[dict] = None, attn_cfg: Optional[dict] = None,
                 path_pdrop: float = 0.0, use_abs_pe: bool = False, max_seq_len: int = 2304,
                 input_pdrop: float = 0.0) -> None:
        super().__init__()
        conv_cfg = {'kernel_size': 3, 'proj_pdrop': 0.0, **(conv_cfg or {})}
        attn_cfg = {'n_head': 4, 'n_mha_win_size': -1, **(attn_cfg or {})}
        if not isinstance(in_channels, int):
            raise ValueError(f'Conv1DTransformerProj supports one input width, got in_channels={in_channels}')
        if norm_cfg is not None and norm_cfg.get('type') != 'LN':
            raise ValueError(f'Conv1DTransformerProj supports norm_cfg=dict(type="LN") or None, got {norm_cfg}')
        if len(arch) != 3:
            raise ValueError(f'arch must be (embed, stem, branch) layer counts, got {arch}')
        if arch[0] == 0 and in_channels != out_channels:
            raise ValueError('arch[0] == 0 needs in_channels == out_channels')
        self.arch = tuple(int(a) for a in arch)
        self.max_seq_len = int(max_seq_len)
        self.n_mha_win_size: Union[int, Sequence[int]] = attn_cfg['n_mha_win_size']
        windows = self.n_mha_win_size
        self.mha_win_size = [windows] * (1 + self.arch[2]) if isinstance(windows, int) else list(windows)
        if len(self.mha_win_size) != 1 + self.arch[2]:
            raise ValueError(f'n_mha_win_size needs one window per level ({1 + self.arch[2]}), got {windows}')
        self.use_abs_pe = use_abs_pe
        self.input_drop = nn.Dropout1d(input_pdrop) if input_pdrop > 0 else nn.Identity()
        self.embed = nn.ModuleList([
            ConvNormAct(in_channels if i == 0 else out_channels, out_channels, conv_cfg['kernel_size'],
                        with_norm=norm_cfg is not None) for i in range(self.arch[0])])
        n_head, proj_pdrop = attn_cfg['n_head'], conv_cfg['proj_pdrop']
        self.stem = nn.ModuleList([
            ConvTransformerBlock(out_channels, n_head, 1, self.mha_win_size[0], proj_pdrop, path_pdrop)
            for _ in range(self.arch[1])])
        self.branch = nn.ModuleList([
            ConvTransformerBlock(out_channels, n_head, 2, self.mha_win_size[1 + i], proj_pdrop, path_pdrop)
            for i in range(self.arch[2])])
        if use_abs_pe:
            table = sincos_1d(out_channels, torch.arange(self.max_seq_len), interleave=True) / math.sqrt(out_channels)
            self.register_buffer('pos_embed', table.t()[None], persistent=False)  # (1, C, max_seq_len)
        for module in self.modules():  # zero biases, as ActionFormer initialises its projection
            if isinstance(module, (nn.Linear, nn.Conv1d)) and module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def num_levels(self) -> int:
        return self.arch[2] + 1

    def _add_position(self, x: Tensor, mask: Tensor) -> Tensor:
        length = x.shape[-1]
        if length > self.max_seq_len and self.training:
            raise ValueError(f'input length {length} exceeds max_seq_len={self.max_seq_len} in training')
        table = self.pos_embed
        if length > self.max_seq_len:  # inference on a longer input: stretch the table
            table = F.interpolate(table, size=length, mode='linear', align_corners=False)
        return x + table[:, :, :length].to(x.dtype) * mask[:, None].to(x.dtype)

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """Pyramid of ``(B, C, T / 2^l)`` features and their ``(B, T / 2^l)`` masks.

        The input is not masked here (the first convolution sees padded steps; its output is masked).
        """
        x = self.input_drop(x)
        for layer in self.embed:
            x, mask = layer(x, mask)
        if self.use_abs_pe:
            x = self._add_position(x, mask)
        for block in self.stem:
            x, mask = block(x, mask)
        feats, masks = [x], [mask]
        for block in self.branch:
            x, mask = block(x, mask)
            feats.append(x)
            masks.append(mask)
        return feats, masks
