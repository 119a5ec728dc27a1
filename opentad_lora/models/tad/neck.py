"""``FPNIdentity``: the ActionFormer neck, a LayerNorm per pyramid level."""
from typing import List, Optional, Sequence, Tuple

from torch import Tensor, nn

from opentad_lora.registry import MODELS

from .blocks import CONV_LN_EPS, layer_norm_channels


@MODELS.register_module()
class FPNIdentity(nn.Module):
    """Normalise every pyramid level (no top-down path; the projection already mixes scales by attention).

    Padded steps are not re-masked (the head's first convolution masks its output), as in OpenTAD.

    Args:
        in_channels: Width of the pyramid levels.
        out_channels: Must equal ``in_channels`` (kept for OpenTAD config compatibility).
        num_levels: Number of levels expected.
        norm_cfg: ``dict(type='LN')`` (LayerNorm, eps 1e-6, parameters ``fpn_norms.{level}``) or None (identity).
    """

    def __init__(self, in_channels: int, out_channels: int, num_levels: int,
                 norm_cfg: Optional[dict] = dict(type='LN')) -> None:
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(f'FPNIdentity keeps the width: in_channels {in_channels} != out_channels {out_channels}')
        if norm_cfg is not None and norm_cfg.get('type') != 'LN':
            raise ValueError(f'FPNIdentity supports norm_cfg=dict(type="LN") or None, got {norm_cfg}')
        self.num_levels = num_levels
        self.fpn_norms = nn.ModuleList([nn.LayerNorm(out_channels, eps=CONV_LN_EPS) if norm_cfg else nn.Identity()
                                        for _ in range(num_levels)])

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        if len(feats) != self.num_levels:
            raise ValueError(f'FPNIdentity expects {self.num_levels} levels, got {len(feats)}')
        return [layer_norm_channels(norm, x) for norm, x in zip(self.fpn_norms, feats)], list(masks)
