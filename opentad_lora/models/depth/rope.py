"""2D rotary position embedding (RoPE-2D) of VGGT's alternating-attention blocks."""
import torch
from torch import Tensor, nn


def patch_positions(batch: int, rows: int, cols: int, num_special: int, device: torch.device) -> Tensor:
    """(batch, num_special + rows*cols, 2) integer ``(y, x)`` positions of a token sequence.

    Patch ``(i, j)`` (row-major) gets ``(i + 1, j + 1)``; the special (camera/register) tokens in front get
    ``(0, 0)``, so RoPE leaves them unrotated relative to each other, as VGGT does.
    """
    grid = torch.cartesian_prod(torch.arange(rows, device=device), torch.arange(cols, device=device)) + 1
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    return torch.cat([special, grid]).unsqueeze(0).expand(batch, -1, -1)


class RotaryPositionEmbedding2D(nn.Module):
    """Rotate the first half of each head's channels by the token's row and the second half by its column.

    Within each half (width ``d``), channel pairs ``(k, k + d/2)`` turn by ``position * frequency^(-2k/d)``
    (the "rotate half" layout of GPT-NeoX/LLaMA), so ``q . k`` depends on the relative 2D offset only.

    Args:
        frequency: Base of the geometric frequency ladder (VGGT uses 100).
    """

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = float(frequency)

    def _rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        inv_freq = self.frequency ** (-torch.arange(0, half, device=x.device, dtype=torch.float32) / half)
        angles = positions.float()[:, None, :, None] * inv_freq  # (B, 1, N, half), shared by the heads
        angles = torch.cat([angles, angles], dim=-1).to(x.dtype)
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * angles.cos() + rotated * angles.sin()

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x`` (B, heads, N, head_dim) by ``positions`` (B, N, 2); ``head_dim`` must be divisible by 4."""
        if x.shape[-1] % 4:
            raise ValueError(f'RoPE-2D needs a head dim divisible by 4, got {x.shape[-1]}.')
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat([self._rotate(rows, positions[..., 0]), self._rotate(cols, positions[..., 1])], dim=-1)
