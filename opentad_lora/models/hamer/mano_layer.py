"""MANO hand model: linear blend skinning from a MANO-format file, 21 keypoints in OpenPose order.

Same maths as ``smplx.MANOLayer`` (0.1.28) used by HaMeR: rotation-matrix input, no PCA and no mean-pose offset,
joints from the kinematic chain, five fingertip vertices appended and reordered with ``MANO_TO_OPENPOSE``.
"""
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from opentad_lora.registry import MODELS
from .mano_io import load_mano_model

#: smplx ``vertex_ids['mano']`` fingertips: thumb, index, middle, ring, pinky.
MANO_TIP_VERTEX_IDS = (744, 320, 443, 554, 671)
#: MANO's 16 joints + 5 tips -> OpenPose/FreiHAND order (wrist, thumb 1-4, index 1-4, middle, ring, pinky).
MANO_TO_OPENPOSE = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)


def batch_rigid_transform(rotmats: Tensor, joints: Tensor, parents: Sequence[int]) -> 'tuple[Tensor, Tensor]':
    """Pose the kinematic chain.

    Args:
        rotmats: ``(B, J, 3, 3)`` local joint rotations (joint 0 is the global orientation).
        joints: ``(B, J, 3)`` rest-pose joint locations.
        parents: parent index of every joint (``-1`` for the root, parents listed before children).

    Returns:
        ``(posed_joints (B, J, 3), skinning transforms (B, J, 4, 4))``; a skinning transform maps a rest-pose point
        to its posed location if the point moved rigidly with that joint.
    """
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, list(parents[1:])]
    local = torch.cat([rotmats, rel.unsqueeze(-1)], dim=-1)
    bottom = local.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(*local.shape[:2], 1, 4)
    local = torch.cat([local, bottom], dim=-2)
    chain = [local[:, 0]]
    for j in range(1, len(parents)):
        chain.append(chain[parents[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)
    posed_joints = world[..., :3, 3]
    rest_offset = (world[..., :3, :3] @ joints.unsqueeze(-1)).squeeze(-1)
    skinning = world.clone()
    skinning[..., :3, 3] = posed_joints - rest_offset
    return posed_joints, skinning


@MODELS.register_module()
class MANOLayer(nn.Module):
    """MANO linear blend skinning.

    The model arrays are non-persistent buffers: they come from the (licence-restricted) model file at
    construction and never end up in our checkpoints.

    Args:
        model_path: MANO-format ``.pkl`` (e.g. ``MANO_RIGHT.pkl`` or the synthetic stand-in).
        num_betas: Number of shape coefficients used.
        tip_vertex_ids: Vertices appended as fingertip keypoints (thumb, index, middle, ring, pinky).
        joint_map: Order of the output keypoints over ``[16 MANO joints, tips]``.
    """

    def __init__(self, model_path: Union[str, Path], num_betas: int = 10,
                 tip_vertex_ids: Sequence[int] = MANO_TIP_VERTEX_IDS,
                 joint_map: Sequence[int] = MANO_TO_OPENPOSE) -> None:
        super().__init__()
        model = load_mano_model(model_path)
        num_verts = model['v_template'].shape[0]
        if model['shapedirs'].shape[-1] < num_betas:
            raise ValueError(f'MANO model file {model_path}: shapedirs has {model["shapedirs"].shape[-1]} '
                             f'shape components, num_betas={num_betas} asked for more')
        if not all(0 <= v < num_verts for v in tip_vertex_ids):
            raise ValueError(f'tip_vertex_ids {tuple(tip_vertex_ids)} must be vertex indices below {num_verts} '
                             f'(MANO model file {model_path})')
        num_joints = len(model['parents'])
        if sorted(joint_map) != list(range(num_joints + len(tip_vertex_ids))):
            raise ValueError(f'joint_map must be a permutation of the {num_joints} MANO joints + '
                             f'{len(tip_vertex_ids)} tips, got {tuple(joint_map)}')
        self.num_betas = num_betas
        self.num_joints = num_joints
        self.parents = [int(p) for p in model['parents']]
        self.faces = model['faces']
        self.hands_mean = model['hands_mean']

        def buffer(name: str, array: np.ndarray, dtype: torch.dtype = torch.float32) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array), dtype=dtype), persistent=False)

        buffer('v_template', model['v_template'])
        buffer('shapedirs', model['shapedirs'][..., :num_betas])
        buffer('posedirs', model['posedirs'].reshape(-1, model['posedirs'].shape[-1]).T)
        buffer('J_regressor', model['J_regressor'])
        buffer('lbs_weights', model['weights'])
        buffer('tip_vertex_ids', np.asarray(tip_vertex_ids), torch.long)
        buffer('joint_map', np.asarray(joint_map), torch.long)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def forward(self, global_orient: Tensor, hand_pose: Tensor, betas: Tensor,
                transl: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Posed mesh and keypoints.

        Args:
            global_orient: ``(B, 1, 3, 3)`` or ``(B, 3, 3)`` root rotation.
            hand_pose: ``(B, J - 1, 3, 3)`` finger joint rotations.
            betas: ``(B, num_betas)`` shape coefficients.
            transl: Optional ``(B, 3)`` translation added to every output point.

        Returns:
            ``vertices (B, V, 3)``, ``joints (B, 21, 3)`` (mapped with ``joint_map``) and ``mano_joints (B, J, 3)``.
        """
        batch = betas.shape[0]
        rotmats = torch.cat([global_orient.reshape(batch, 1, 3, 3), hand_pose.reshape(batch, -1, 3, 3)], dim=1)
        if rotmats.shape[1] != self.num_joints:
            raise ValueError(f'MANO expects {self.num_joints} rotations (global + hand), got {rotmats.shape[1]}')
        with torch.autocast(self.v_template.device.type, enabled=False):  # skinning in float32 even under AMP
            return self._skin(rotmats.to(self.v_template.dtype), betas.to(self.v_template.dtype),
                              None if transl is None else transl.to(self.v_template.dtype))

    def _skin(self, rotmats: Tensor, betas: Tensor, transl: Optional[Tensor]) -> Dict[str, Tensor]:
        batch = betas.shape[0]
        v_shaped = self.v_template + torch.einsum('bl,vkl->bvk', betas, self.shapedirs)
        rest_joints = torch.einsum('jv,bvk->bjk', self.J_regressor, v_shaped)
        eye = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device)
        pose_feature = (rotmats[:, 1:] - eye).reshape(batch, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(batch, -1, 3)
        mano_joints, skinning = batch_rigid_transform(rotmats, rest_joints, self.parents)
        per_vertex = torch.einsum('vj,bjxy->bvxy', self.lbs_weights, skinning)
        vertices = (per_vertex[..., :3, :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + per_vertex[..., :3, 3]
        if transl is not None:
            vertices = vertices + transl[:, None]
            mano_joints = mano_joints + transl[:, None]
        tips = vertices[:, self.tip_vertex_ids]
        joints = torch.cat([mano_joints, tips], dim=1)[:, self.joint_map]
        return dict(vertices=vertices, joints=joints, mano_joints=mano_joints)
