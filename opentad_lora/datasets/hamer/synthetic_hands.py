"""Render hands from a MANO-format model into FreiHAND's file layout (the real format, so the real loader runs).

Writes, for a split ``S`` (FreiHAND uses ``training``/``evaluation``):
``S_K.json`` (3x3 intrinsics), ``S_mano.json`` (``[[48 pose, 10 shape, 2 uv_root, 1 scale]]``, finger pose relative
to the model's ``hands_mean`` as in FreiHAND), ``S_xyz.json`` (21 keypoints, metres, camera frame, FreiHAND/OpenPose
order), ``S_verts.json`` (mesh vertices), ``S_scale.json`` (middle-finger MCP-PIP length) and ``S/rgb/%08d.png``;
plus, unless ``num_mocap=0``, ``mocap.npz`` (``hand_pose`` (N, 48) absolute axis-angle, ``betas``): unpaired
poses for the discriminator.
"""
import json
from pathlib import Path
from typing import Dict, Union

import cv2
import numpy as np
import torch

FINGER_CHAINS = ((1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12), (13, 14, 15))


def _flex_axes(joints: np.ndarray, tips: np.ndarray) -> np.ndarray:
    """Per finger joint, the axis a finger curls about and the palm normal (``(15, 2, 3)``), from the rest pose."""
    normal = np.cross(joints[1] - joints[0], joints[7] - joints[0])
    normal /= np.linalg.norm(normal)
    axes = np.zeros((15, 2, 3))
    for finger, chain in enumerate(FINGER_CHAINS):
        for k, joint in enumerate(chain):
            child = joints[chain[k + 1]] if k < 2 else tips[finger]
            flex = np.cross(child - joints[joint], normal)
            axes[joint - 1] = flex / np.linalg.norm(flex), normal
    return axes


def sample_global_orient(rng: np.random.Generator, max_angle_deg: float) -> np.ndarray:
    """Axis-angle of a rotation about a uniformly random axis by an angle uniform in ``[0, max_angle_deg]``.

    The identity is the rest hand seen palm-on (fingers along +x, palm normal along the optical axis), which is also
    where the MANO head starts; bounding the tilt keeps the view learnable in a short run. Uniformly random
    rotations leave a barely trained model's orientation so wrong that the 2D keypoint loss is smallest with the
    hand shrunk to a point, which drives the crop scale ``s`` towards 0 instead of to the data's ~6.
    """
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return axis * np.deg2rad(rng.uniform(0.0, max_angle_deg))


def sample_hand_pose(rng: np.random.Generator, axes: np.ndarray) -> np.ndarray:
    """Absolute finger pose ``(45,)``: a per-finger curl plus joint noise about the flex axes, small spread."""
    pose = np.zeros((15, 3))
    for finger, chain in enumerate(FINGER_CHAINS):
        curl = rng.uniform(-0.1, 0.5 if finger == 4 else 0.9)
        for k, joint in enumerate(chain):
            flex = curl + rng.normal(0.0, 0.1)
            spread = rng.normal(0.0, 0.12) if k == 0 else 0.0
            pose[joint - 1] = flex * axes[joint - 1, 0] + spread * axes[joint - 1, 1]
    return pose.reshape(-1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    image = np.full((size, size, 3), rng.integers(40, 216, size=3), np.float32)
    for _ in range(3):
        x0, y0 = rng.integers(0, size, size=2)
        w, h = rng.integers(size // 8, size // 2, size=2)
        image[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=3)
    image += rng.normal(0.0, 8.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _face_colors(model: Dict[str, np.ndarray]) -> np.ndarray:
    """Skin tone on the palm, a distinct tint per finger, so fingers are tellable apart."""
    finger_tints = np.array([[0.55, 0.65, 0.95], [0.45, 0.85, 0.60], [0.85, 0.55, 0.55],
                             [0.85, 0.80, 0.45], [0.75, 0.50, 0.85]])
    owner = model['weights'].argmax(1)
    finger = np.full(len(owner), -1)
    for k, chain in enumerate(FINGER_CHAINS):
        finger[np.isin(owner, chain)] = k
    vertex_colors = np.where(finger[:, None] >= 0, finger_tints[finger], [0.60, 0.72, 0.90])
    return vertex_colors[model['faces']].mean(1)


def write_synthetic_freihand(out_dir: Union[str, Path], mano_path: Union[str, Path], num_samples: int,
                             split: str = 'training', image_size: int = 224, num_mocap: int = 64,
                             seed: int = 0, max_tilt_deg: float = 45.0) -> Path:
    """Render ``num_samples`` random right hands from the MANO-format model at ``mano_path`` into ``out_dir``.

    ``max_tilt_deg`` bounds the global rotation away from the palm-on view (see :func:`sample_global_orient`).

    Returns:
        ``out_dir``.
    """
    from opentad_lora.models.hamer import MANOLayer, aa_to_rotmat, load_mano_model
    from opentad_lora.models.hamer.renderer import render_mesh

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    (out_dir / split / 'rgb').mkdir(parents=True, exist_ok=True)
    model = load_mano_model(mano_path)
    layer = MANOLayer(mano_path)
    rest = layer(torch.eye(3)[None, None], torch.eye(3).expand(1, 15, 3, 3), torch.zeros(1, layer.num_betas))
    axes = _flex_axes(rest['mano_joints'][0].numpy(), rest['vertices'][0, layer.tip_vertex_ids].numpy())
    colors = _face_colors(model)
    records: Dict[str, list] = {k: [] for k in ('K', 'mano', 'xyz', 'verts', 'scale')}
    for index in range(num_samples):
        global_aa, hand_aa = sample_global_orient(rng, max_tilt_deg), sample_hand_pose(rng, axes)
        betas = np.clip(rng.normal(0.0, 0.8, size=layer.num_betas), -2.0, 2.0)
        with torch.no_grad():
            out = layer(aa_to_rotmat(torch.tensor(global_aa, dtype=torch.float32)).reshape(1, 1, 3, 3),
                        aa_to_rotmat(torch.tensor(hand_aa, dtype=torch.float32).reshape(15, 3))[None],
                        torch.tensor(betas, dtype=torch.float32)[None])
        verts, joints = out['vertices'][0].double().numpy(), out['joints'][0].double().numpy()
        focal = rng.uniform(1.9, 2.6) * image_size
        depth = rng.uniform(0.55, 0.85)
        offset = rng.uniform(-0.08, 0.08, size=2) * depth * image_size / focal
        translation = np.array([offset[0], offset[1], depth]) - verts.mean(0)
        verts, joints = verts + translation, joints + translation
        K = np.array([[focal, 0.0, image_size / 2], [0.0, focal, image_size / 2], [0.0, 0.0, 1.0]])
        image, _ = render_mesh(verts, model['faces'], K, (image_size, image_size),
                               background=_background(rng, image_size), face_colors=colors)
        cv2.imwrite(str(out_dir / split / 'rgb' / f'{index:08d}.png'), image)
        uv_root = (K @ joints[0])[:2] / joints[0, 2]
        scale = float(np.linalg.norm(joints[10] - joints[9]))
        pose = np.concatenate([global_aa, hand_aa - model['hands_mean']])
        records['K'].append(K.tolist())
        records['mano'].append([[*pose.tolist(), *betas.tolist(), *uv_root.tolist(), scale]])
        records['xyz'].append(joints.tolist())
        records['verts'].append(verts.tolist())
        records['scale'].append(scale)
    for key, values in records.items():
        (out_dir / f'{split}_{key}.json').write_text(json.dumps(values))
    if num_mocap <= 0:
        return out_dir
    mocap_pose = [np.concatenate([sample_global_orient(rng, max_tilt_deg), sample_hand_pose(rng, axes)])
                  for _ in range(num_mocap)]
    np.savez(out_dir / 'mocap.npz', hand_pose=np.asarray(mocap_pose, np.float32),
             betas=np.clip(rng.normal(0.0, 0.8, size=(num_mocap, layer.num_betas)), -2, 2).astype(np.float32))
    return out_dir
