"""Image to patch tokens with a strided 2D convolution (``patch_embed.proj``)."""
from typing import Callable, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

IntPair = Union[int, Sequence[int]]


def to_2tuple(value: IntPair) -> Tuple[int, int]:
    """``7 -> (7, 7)``; a pair stays a pair (as a tuple)."""
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f'Expected an int or a pair, got {value!r}.')
    return pair


class PatchEmbed(nn.Module):
    """``Conv2d(in_chans, embed_dim, kernel=stride=patch_size, padding)`` then flatten to (B, N, C).

    ``padding`` supports ViTPose/HaMeR's patch embedding (patch 16 with padding 2 on 256x192 input keeps the 16x12
    grid). The grid follows the convolution arithmetic, so :attr:`grid_size` is exact for any padding.

    Args:
        img_size: Input (H, W) the position embedding is built for.
        patch_size: Patch (kernel and stride) size.
        in_chans: Input channels.
        embed_dim: Token width.
        padding: Zero padding of the convolution.
        norm_layer: Optional norm class applied to the tokens, built as ``norm_layer(embed_dim)``.
        bias: Bias of the convolution.
    """

    def __init__(self, img_size: IntPair = 224, patch_size: IntPair = 16, in_chans: int = 3, embed_dim: int = 768,
                 padding: IntPair = 0, norm_layer: Optional[Callable[[int], nn.Module]] = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.padding = to_2tuple(padding)
        self.grid_size = self.output_grid(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size,
                              padding=self.padding, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def output_grid(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """Token grid (rows, cols) of an input of spatial ``size``."""
        return tuple((s + 2 * p - k) // k + 1 for s, p, k in zip(size, self.padding, self.patch_size))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, rows*cols, embed_dim), rows major."""
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))
