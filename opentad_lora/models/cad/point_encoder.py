"""CAD-Recode's point encoder: Fourier features of xyz (plus normals in v1), then one linear projection to the LLM
width."""
from typing import Mapping

import torch
from torch import Tensor, nn

from opentad_lora.registry import MODELS


@MODELS.register_module()
class FourierPointEncoder(nn.Module):
    """``[xyz, sin(xyz * 2^k), cos(xyz * 2^k)(, normals)]`` for ``k < num_freqs`` -> ``Linear`` to ``hidden_size``.

    With the default 8 frequencies the feature has 3 + 2 * 3 * 8 = 51 dims (CAD-Recode v1.5, xyz only) or 54 with
    the unit normals appended unchanged (CAD-Recode v1). The parameter names (``projection.weight``/``.bias``)
    match CAD-Recode's checkpoint keys under ``point_encoder.``. It stays in float32 whatever the LLM's dtype
    (CAD-Recode does the same); the output is cast by the caller.

    Args:
        hidden_size: Width of the LLM's token embeddings.
        num_freqs: Number of octave frequencies.
        normals: Whether each point carries its normal (input ``(B, N, 6)`` instead of ``(B, N, 3)``).
    """

    def __init__(self, hidden_size: int, num_freqs: int = 8, normals: bool = False) -> None:
        super().__init__()
        self.normals = bool(normals)
        self.register_buffer('frequencies', 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)
        self.projection = nn.Linear(feature_size(num_freqs, self.normals), hidden_size)

    @property
    def point_dims(self) -> int:
        """Columns of one input point: 6 (xyz + normal) or 3 (xyz)."""
        return 6 if self.normals else 3

    def forward(self, points: Tensor) -> Tensor:
        """``(B, N, 3|6)`` points (xyz fitted to ``[-1, 1]``) -> ``(B, N, hidden_size)`` float32 embeddings."""
        if points.shape[-1] != self.point_dims:
            raise ValueError(
                f'This point encoder takes {self.point_dims} numbers per point '
                f'({"xyz + normals, CAD-Recode v1" if self.normals else "xyz, CAD-Recode v1.5"}), got points of '
                f'shape {tuple(points.shape)}: load them with LoadCADPointCloud(recipe='
                f'{"v1" if self.normals else "v1.5"!r}).')
        points = points.float()
        xyz = points[..., :3]
        scaled = (xyz.unsqueeze(-1) * self.frequencies).flatten(-2)
        return self.projection(torch.cat([xyz, scaled.sin(), scaled.cos(), points[..., 3:]], dim=-1))


def feature_size(num_freqs: int, normals: bool) -> int:
    """Input width of the projection: xyz, sin and cos of ``num_freqs`` octaves per axis, and 3 for the normal."""
    return 3 + 6 * num_freqs + (3 if normals else 0)


def encoder_has_normals(state: Mapping[str, Tensor], num_freqs: int, source: str) -> bool:
    """Whether a stored point encoder (``projection.weight`` of shape ``(hidden, in)``) expects normals: ``in`` is
    51 (xyz, v1.5) or 54 (xyz + normals, v1) for 8 frequencies; anything else is an error naming ``source``."""
    in_features = state['projection.weight'].shape[1]
    for normals in (False, True):
        if in_features == feature_size(num_freqs, normals):
            return normals
    raise ValueError(f'{source}: point_encoder.projection.weight has {in_features} inputs, neither '
                     f'{feature_size(num_freqs, False)} (xyz) nor {feature_size(num_freqs, True)} (xyz + normals) '
                     f'for num_freqs={num_freqs}.')
