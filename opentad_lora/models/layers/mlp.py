"""Transformer feed-forward block with timm's module names (``fc1``, ``act``, ``fc2``)."""
from typing import Callable, Optional

from torch import Tensor, nn

from ...peft import linear_after


class Mlp(nn.Module):
    """``fc1 -> act -> drop -> fc2 -> drop``.

    The names match timm/ViTPose/VideoMAE checkpoints, so LoRA targets ``fc1``/``fc2`` and pretrained keys
    ``blocks.N.mlp.fc1.weight`` work unchanged. LoRA ``fc1``/``fc2`` apply the block's norm (given to forward) and
    ``act`` themselves (:func:`~opentad_lora.peft.linear_after`, without dropout between): they keep no copy of
    their inputs beyond what the norm and the activation keep anyway.

    Args:
        in_features: Input width.
        hidden_features: Hidden width (default: ``in_features``).
        out_features: Output width (default: ``in_features``).
        act_layer: Activation class, built with no arguments.
        drop: Dropout after the activation and after ``fc2``.
        bias: Whether both linears have a bias.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 act_layer: Callable[[], nn.Module] = nn.GELU, drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor, norm: Optional[nn.Module] = None) -> Tensor:
        """``mlp(norm(x))`` (``mlp(x)`` without ``norm``)."""
        hidden = linear_after(self.fc1, norm, x)
        if self.training and self.drop1.p > 0.0:
            return self.drop2(self.fc2(self.drop1(self.act(hidden))))
        return self.drop2(linear_after(self.fc2, self.act, hidden))
