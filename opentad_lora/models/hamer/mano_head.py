"""HaMeR's MANO head: one query token cross-attends to the ViT tokens; linear read-outs add residuals to the mean."""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from opentad_lora.registry import MODELS
from .geometry import rot6d_to_rotmat
from .pose_transformer import TransformerDecoder

#: 6D code of the identity rotation under ``rot6d_to_rotmat``.
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _mean_params(path: Optional[Union[str, Path]], num_joints: int, num_betas: int,
                 default_cam: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pose 6D (6 J,), betas, cam)`` from HaMeR's ``mano_mean_params.npz`` or identity / zero / ``default_cam``."""
    if path is None:
        return (np.tile(IDENTITY_6D, num_joints), np.zeros(num_betas), np.asarray(default_cam, dtype=np.float64))
    try:
        with np.load(path) as data:
            arrays = tuple(np.asarray(data[key], dtype=np.float64).reshape(-1) for key in ('pose', 'shape', 'cam'))
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f'Cannot read MANO mean parameters {path} (needs arrays pose, shape, cam): {err}') from None
    expected = (6 * num_joints, num_betas, 3)
    for name, array, size in zip(('pose', 'shape', 'cam'), arrays, expected):
        if array.size != size:
            raise ValueError(f'MANO mean parameters {path}: {name!r} has {array.size} values, expected {size}')
    return arrays


@MODELS.register_module()
class MANOTransformerDecoderHead(nn.Module):
    """Cross-attention MANO regressor (HaMeR's ``MANOTransformerDecoderHead``, 6D joint rotations).

    Args:
        context_dim: Width of the image tokens (ViT width).
        dim: Width of the query token (HaMeR: 1024).
        depth, heads, dim_head, mlp_dim, dropout, emb_dropout: Transformer decoder sizes (HaMeR: 6, 8, 64, 1024).
        num_hand_joints: Finger joints (MANO: 15); the global orientation is one more rotation.
        num_betas: Shape coefficients.
        ief_iters: Iterative error feedback rounds (HaMeR: 1); every round adds a residual.
        transformer_input: ``'zero'`` (a constant zero token, HaMeR's default) or ``'mean_shape'`` (the current
            estimate as token).
        mean_params: HaMeR's ``mano_mean_params.npz``; None starts from identity rotations, zero betas and
            ``default_cam``. The mean is kept in buffers ``init_hand_pose``/``init_betas``/``init_cam``, which the
            official checkpoint overwrites.
        default_cam: Starting camera ``(s, tx, ty)`` without ``mean_params``; ``s = 4`` puts a 19 cm hand at
            ``2 * 5000 / (256 * 4)`` = 9.8 m, spanning about 40 % of the crop under HaMeR's 5000 px focal length.
        init_decoder_xavier: Xavier-initialise the read-outs with gain 0.01 (small first residuals).
    """

    def __init__(self, context_dim: int = 1280, dim: int = 1024, depth: int = 6, heads: int = 8, dim_head: int = 64,
                 mlp_dim: int = 1024, dropout: float = 0.0, emb_dropout: float = 0.0, num_hand_joints: int = 15,
                 num_betas: int = 10, ief_iters: int = 1, transformer_input: str = 'zero',
                 mean_params: Optional[Union[str, Path]] = None, default_cam: Sequence[float] = (4.0, 0.0, 0.0),
                 init_decoder_xavier: bool = False) -> None:
        super().__init__()
        if transformer_input not in ('zero', 'mean_shape'):
            raise ValueError(f"transformer_input must be 'zero' or 'mean_shape', got {transformer_input!r}")
        if ief_iters < 1:
            raise ValueError(f'ief_iters must be >= 1, got {ief_iters}')
        self.num_hand_joints = num_hand_joints
        self.ief_iters = ief_iters
        self.input_is_mean_shape = transformer_input == 'mean_shape'
        npose = 6 * (num_hand_joints + 1)
        token_dim = npose + num_betas + 3 if self.input_is_mean_shape else 1
        self.transformer = TransformerDecoder(num_tokens=1, token_dim=token_dim, dim=dim, depth=depth, heads=heads,
                                              mlp_dim=mlp_dim, dim_head=dim_head, dropout=dropout,
                                              emb_dropout=emb_dropout, context_dim=context_dim)
        self.decpose = nn.Linear(dim, npose)
        self.decshape = nn.Linear(dim, num_betas)
        self.deccam = nn.Linear(dim, 3)
        if init_decoder_xavier:
            for layer in (self.decpose, self.decshape, self.deccam):
                nn.init.xavier_uniform_(layer.weight, gain=0.01)
        pose, betas, cam = _mean_params(mean_params, num_hand_joints + 1, num_betas, default_cam)
        self.register_buffer('init_hand_pose', torch.as_tensor(pose, dtype=torch.float32)[None])
        self.register_buffer('init_betas', torch.as_tensor(betas, dtype=torch.float32)[None])
        self.register_buffer('init_cam', torch.as_tensor(cam, dtype=torch.float32)[None])

    def forward(self, feats: Tensor) -> Dict[str, Tensor]:
        """Regress MANO parameters and the crop camera.

        Args:
            feats: Image tokens ``(B, N, context_dim)`` or a feature map ``(B, context_dim, H, W)``.

        Returns:
            ``global_orient (B, 1, 3, 3)``, ``hand_pose (B, J, 3, 3)``, ``betas (B, num_betas)``, ``pred_cam (B, 3)``
            and ``pose_6d (B, 6 (J + 1))`` (the last iterate; earlier iterates are not kept).
        """
        if feats.dim() == 4:
            feats = feats.flatten(2).transpose(1, 2)
        batch = feats.shape[0]
        pose = self.init_hand_pose.expand(batch, -1)
        betas = self.init_betas.expand(batch, -1)
        cam = self.init_cam.expand(batch, -1)
        for _ in range(self.ief_iters):
            if self.input_is_mean_shape:
                token = torch.cat([pose, betas, cam], dim=1)[:, None]
            else:
                token = feats.new_zeros(batch, 1, 1)
            out = self.transformer(token, context=feats)[:, 0]
            pose = self.decpose(out) + pose
            betas = self.decshape(out) + betas
            cam = self.deccam(out) + cam
        rotmats = rot6d_to_rotmat(pose).reshape(batch, self.num_hand_joints + 1, 3, 3)
        return dict(global_orient=rotmats[:, :1], hand_pose=rotmats[:, 1:], betas=betas, pred_cam=cam, pose_6d=pose)
