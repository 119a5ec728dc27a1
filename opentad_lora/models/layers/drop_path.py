"""Stochastic depth (drop path): drop whole residual branches per sample during training."""
import torch
from torch import Tensor, nn


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True) -> Tensor:
    """Zero the whole sample ``x[i]`` with probability ``drop_prob`` (rescaling survivors by ``1/keep``).

    Args:
        x: Residual-branch output, any shape with the batch first.
        drop_prob: Probability of dropping one sample's branch.
        training: Identity when False (evaluation).
        scale_by_keep: Divide kept samples by ``1 - drop_prob`` so the expectation is unchanged.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0], ) + (1, ) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        mask.div_(keep_prob)
    return x * mask


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (stochastic depth of Huang et al., 2016).

    Under ``torch.compile`` the keep probability is read from a (non-persistent) buffer, not the float attribute:
    dynamo makes a float attribute a constant of the graph, so blocks whose rates rise over the depth would each
    compile a graph of their own, and regional compilation (one graph for every block) would compile them all. The
    buffer holds it in units of 2**-24 as an integer, which ``model.half()`` or autocast cannot round (0.9 in bf16 is
    0.8984). Eager calls keep :func:`drop_path` and its random stream; compiled ones draw from inductor's anyway.
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}.')
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep
        self.register_buffer('keep_q24', torch.tensor(round((1.0 - drop_prob) * 2 ** 24)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():
            return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)
        if not self.training:
            return x
        keep = self.keep_q24 / 2.0 ** 24  # float32: 1 - drop_prob within 2**-24
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask / keep if self.scale_by_keep else mask)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


def drop_path_rates(drop_path_rate: float, depth: int) -> list:
    """Stochastic-depth rate of each of ``depth`` blocks, rising linearly from 0 to ``drop_path_rate``."""
    return [float(r) for r in torch.linspace(0, drop_path_rate, depth)] if depth > 0 else []
