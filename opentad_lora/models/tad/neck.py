"""``FPNIdentity``: the ActionFormer neck, a LayerNorm per pyramid level."""
from typing import List, Sequence, Tuple

from torch import Tensor, nn

from opentad_lora.registry import MODELS

from .blocks import ChannelLayerNorm


@MODELS.register_module()
class FPNIdentity(nn.Module):
    """Normalise every pyramid level (no top-down path; the projection already mixes scales by attention).

    Args:
        in_channels: Width of the pyramid levels.
        out_channels: Must equal ``in_channels`` (kept for OpenTAD config compatibility).
        num_levels: Number of levels expected.
        with_ln: LayerNorm each level (else identity).
    """

    def __init__(self, in_channels: int, out_channels: int, num_levels: int, with_ln: bool = True) -> None:
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(f'FPNIdentity keeps the width: in_channels {in_channels} != out_channels {out_channels}')
        self.num_levels = num_levels
        self.norms = nn.ModuleList([ChannelLayerNorm(out_channels) if with_ln else nn.Identity()
                                    for _ in range(num_levels)])

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        if len(feats) != self.num_levels:
            raise ValueError(f'FPNIdentity expects {self.num_levels} levels, got {len(feats)}')
        outs = [norm(x) * mask[:, None].to(x.dtype) for norm, x, mask in zip(self.norms, feats, masks)]
        return outs, list(masks)
