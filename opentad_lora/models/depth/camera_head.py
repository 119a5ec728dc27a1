"""``CameraHead``: VGGT's iterative camera-pose head on the camera tokens (``absT_quaR_FoV`` encoding)."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor, nn

from opentad_lora.registry import MODELS
from ..layers import Mlp, TransformerBlock

POSE_DIM = 9  # translation (3), quaternion (4), field of view (2)
_ACTIVATIONS = {'linear': lambda x: x, 'relu': F.relu, 'exp': torch.exp}


@MODELS.register_module()
class CameraHead(BaseModule):
    """Predict one 9-D pose encoding per view, refined over ``num_iterations`` DiT-style (AdaLN) steps.

    The camera token of the last aggregator output is normed (``token_norm``); each iteration embeds the current
    estimate (the learned ``empty_pose_tokens`` first, then the detached previous estimate) with ``embed_pose``,
    turns it into shift/scale/gate (``poseLN_modulation``), modulates the tokens, runs the ``trunk`` (attention
    across the views) and adds the ``pose_branch`` output to the estimate. Names follow the official head.

    Args:
        dim_in: Token width (2C of the aggregator).
        trunk_depth: Transformer blocks in the trunk.
        num_heads: Their heads.
        mlp_ratio: Their MLP ratio.
        init_values: Their LayerScale init.
        num_iterations: Refinement iterations (one output per iteration).
        trans_act: Activation of the translation (``'linear'``).
        quat_act: Activation of the quaternion (``'linear'``).
        fov_act: Activation of the field of view (``'relu'``, keeps it non-negative).
        init_cfg: MMEngine init config.
    """

    def __init__(self, dim_in: int = 2048, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0,
                 init_values: float = 0.01, num_iterations: int = 4, trans_act: str = 'linear',
                 quat_act: str = 'linear', fov_act: str = 'relu', init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        for act in (trans_act, quat_act, fov_act):
            if act not in _ACTIVATIONS:
                raise ValueError(f'Unknown pose activation {act!r}; use one of {sorted(_ACTIVATIONS)}.')
        self.activations = (trans_act, quat_act, fov_act)
        self.num_iterations = num_iterations
        self.trunk = nn.Sequential(*[
            TransformerBlock(dim_in, num_heads, mlp_ratio, qkv_bias=True, init_values=init_values)
            for _ in range(trunk_depth)
        ])
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_DIM)

    def activate(self, encoding: Tensor) -> Tensor:
        """Apply the translation / quaternion / FoV activations to a raw (..., 9) encoding."""
        parts = torch.split(encoding, [3, 4, 2], dim=-1)
        return torch.cat([_ACTIVATIONS[act](part) for act, part in zip(self.activations, parts)], dim=-1)

    def forward(self, tokens: List[Tensor], num_iterations: Optional[int] = None) -> List[Tensor]:
        """Return the activated (B, S, 9) estimate of every iteration (the last is the prediction).

        Args:
            tokens: Aggregator outputs; the camera token (index 0) of the last one is used.
            num_iterations: Override of the number of refinement iterations.
        """
        pose_tokens = self.token_norm(tokens[-1][:, :, 0])
        batch, frames, _ = pose_tokens.shape
        estimate, outputs = None, []
        for _ in range(num_iterations or self.num_iterations):
            source = self.empty_pose_tokens.expand(batch, frames, -1) if estimate is None else estimate.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(source)).chunk(3, dim=-1)
            modulated = gate * (self.adaln_norm(pose_tokens) * (1 + scale) + shift) + pose_tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(modulated)))
            estimate = delta if estimate is None else estimate + delta
            outputs.append(self.activate(estimate))
        return outputs
