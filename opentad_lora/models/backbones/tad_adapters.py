"""AdaTAD's adapters that follow each ViT block: the temporal-informative adapter (TIA) and its plain variant.

Both are bottlenecks ``x + up_proj(...(GELU(down_proj(x)))) * gamma`` whose up-projection starts at zero, so a
freshly built adapter is the identity and the frozen ViT's features are unchanged at step 0. The TIA adds a
depth-wise temporal convolution that runs over the tokens of one spatial position across the *whole* window: the
window's 16-frame chunks are batched through the ViT independently, and this convolution is the only place where
information crosses chunk boundaries.
"""
import math
from typing import Tuple

import torch
from torch import Tensor, nn

Grid = Tuple[int, int, int]  # (time steps of the whole window, rows, cols) of the token grid


class PlainAdapter(nn.Module):
    """Bottleneck adapter ``x + up_proj(GELU(down_proj(x))) * gamma`` (AdaTAD's ``use_plain_adapter=True``).

    Args:
        embed_dims: Token width.
        mlp_ratio: Bottleneck width as a fraction of ``embed_dims``.
    """

    def __init__(self, embed_dims: int, mlp_ratio: float = 0.25) -> None:
        super().__init__()
        self.hidden_dims = int(embed_dims * mlp_ratio)
        if self.hidden_dims < 1:
            raise ValueError(f'adapter_mlp_ratio={mlp_ratio} leaves no hidden channel for embed_dims={embed_dims}.')
        self.down_proj = nn.Linear(embed_dims, self.hidden_dims)
        self.act = nn.GELU()
        self.up_proj = nn.Linear(self.hidden_dims, embed_dims)
        self.gamma = nn.Parameter(torch.ones(1))
        nn.init.trunc_normal_(self.down_proj.weight, std=0.02)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def mix(self, hidden: Tensor, grid: Grid) -> Tensor:
        """Hook for the temporal mixing of the bottleneck features; the plain adapter has none."""
        return hidden

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        """Adapt the tokens ``x`` of shape (videos * chunks, chunk_steps * rows * cols, C), time major."""
        hidden = self.act(self.down_proj(x))
        return x + self.up_proj(self.mix(hidden, grid)) * self.gamma


class TemporalAdapter(PlainAdapter):
    """AdaTAD's temporal-informative adapter: the bottleneck plus ``conv1x1(dwconv_k(h))`` over the whole window.

    The tokens of all chunks of one video are laid out as (chunks, chunk_steps, rows, cols) in memory, so a reshape
    to (videos, window_steps, rows, cols) joins the chunks back into one time axis before the convolution.

    Args:
        embed_dims: Token width.
        mlp_ratio: Bottleneck width as a fraction of ``embed_dims``.
        kernel_size: Temporal kernel of the depth-wise convolution.
        dilation: Its dilation.
    """

    def __init__(self, embed_dims: int, mlp_ratio: float = 0.25, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__(embed_dims, mlp_ratio)
        hidden = self.hidden_dims
        self.dwconv = nn.Conv1d(hidden, hidden, kernel_size, padding=(kernel_size // 2) * dilation,
                                dilation=dilation, groups=hidden)
        self.conv = nn.Conv1d(hidden, hidden, 1)
        nn.init.normal_(self.dwconv.weight, std=math.sqrt(2.0 / kernel_size))
        nn.init.zeros_(self.dwconv.bias)
        nn.init.normal_(self.conv.weight, std=math.sqrt(2.0 / hidden))
        nn.init.zeros_(self.conv.bias)

    def mix(self, hidden: Tensor, grid: Grid) -> Tensor:
        steps, rows, cols = grid
        batch, tokens, channels = hidden.shape
        seq = hidden.reshape(-1, steps, rows, cols, channels).permute(0, 2, 3, 4, 1).flatten(0, 2)  # (V*h*w, C, T)
        seq = self.conv(self.dwconv(seq))
        seq = seq.unflatten(0, (-1, rows, cols)).permute(0, 4, 1, 2, 3).reshape(batch, tokens, channels)
        return hidden + seq

