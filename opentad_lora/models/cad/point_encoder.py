"""CAD-Recode's point encoder: Fourier features of xyz followed by one linear projection to the LLM width."""
import torch
from torch import Tensor, nn

from opentad_lora.registry import MODELS


@MODELS.register_module()
class FourierPointEncoder(nn.Module):
    """``[xyz, sin(xyz * 2^k), cos(xyz * 2^k)]`` for ``k < num_freqs`` -> ``Linear`` to ``hidden_size``.

    With the default 8 frequencies the feature has 3 + 2 * 3 * 8 = 51 dims, as in CAD-Recode, and the parameter
    names (``projection.weight``/``projection.bias``) match its checkpoint keys under ``point_encoder.``. It stays
    in float32 whatever the LLM's dtype (CAD-Recode does the same); the output is cast by the caller.

    Args:
        hidden_size: Width of the LLM's token embeddings.
        num_freqs: Number of octave frequencies.
    """

    def __init__(self, hidden_size: int, num_freqs: int = 8) -> None:
        super().__init__()
        self.register_buffer('frequencies', 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)
        self.projection = nn.Linear(3 + 6 * num_freqs, hidden_size)

    def forward(self, points: Tensor) -> Tensor:
        """``(B, N, 3)`` points (fitted to ``[-1, 1]``) -> ``(B, N, hidden_size)`` float32 embeddings."""
        points = points.float()
        scaled = (points.unsqueeze(-1) * self.frequencies).flatten(-2)
        return self.projection(torch.cat([points, scaled.sin(), scaled.cos()], dim=-1))
