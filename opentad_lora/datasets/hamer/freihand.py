"""FreiHAND-layout hand dataset: ``<split>_K.json``, ``<split>_xyz.json`` (+ ``_mano``, ``_verts``) and images."""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
from mmengine.dataset import BaseDataset

from opentad_lora.registry import DATASETS


def axis_angle_to_rotmats(axis_angle: np.ndarray) -> np.ndarray:
    """``(N * 3,)`` axis-angle values -> ``(N, 3, 3)`` rotation matrices (OpenCV's Rodrigues)."""
    return np.stack([cv2.Rodrigues(np.asarray(aa, np.float64).reshape(3, 1))[0]
                     for aa in np.asarray(axis_angle).reshape(-1, 3)]).astype(np.float32)


def _read_json_list(path: Path, required: bool) -> Optional[list]:
    if not path.is_file():
        if required:
            raise FileNotFoundError(f'FreiHAND annotation file {path} does not exist.')
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'FreiHAND annotation file {path} is not valid JSON: {err}') from None
    if not isinstance(data, list):
        raise ValueError(f'FreiHAND annotation file {path} must hold a list, got {type(data).__name__}.')
    return data


@DATASETS.register_module()
class FreiHANDDataset(BaseDataset):
    """Right-hand crops with 2D/3D keypoints, MANO parameters and intrinsics, in FreiHAND's file layout.

    Each sample has the intrinsics ``K``, 21 camera-frame keypoints (metres, FreiHAND/OpenPose order; the 2D
    keypoints are their projection), and, when the files exist, MANO parameters (``_mano.json``: 48 axis-angle pose
    values incl. the global orientation, then 10 betas) and mesh vertices (``_verts.json``). The transforms
    (:class:`HandCrop`, :class:`PackHandInputs`) cut the hand crop and pack the targets.

    Args:
        data_root: Folder with the JSON files and the image folder.
        split: File prefix (``'training'`` or ``'evaluation'`` in FreiHAND).
        img_dir: Image folder relative to ``data_root`` (default ``<split>/rgb``).
        img_suffix: Image extension (FreiHAND: ``.jpg``; the synthetic writer: ``.png``).
        versions: Image versions to use; FreiHAND's training set stores version ``v`` of sample ``i`` as image
            ``i + v * num_samples`` (0 green screen, 1 homogenized, 2 sample, 3 auto).
        add_hands_mean: The finger pose in ``_mano.json`` is relative to MANO's mean pose (FreiHAND's convention);
            add ``hands_mean`` from ``mano_model_path`` to get absolute rotations.
        mano_model_path: MANO-format file, needed with ``add_hands_mean``.
        mocap_file: Optional ``.npz`` (``hand_pose (N, 48)`` absolute axis-angle, ``betas (N, 10)``) of unpaired
            MANO poses, HaMeR's ``FREIHAND-MOCAP``: each sample draws one as "real" input for the discriminator.
            Without it the sample's own MANO annotation is used.
    """

    METAINFO = dict(dataset_name='FreiHAND', num_keypoints=21)

    def __init__(self, data_root: str, split: str = 'training', img_dir: Optional[str] = None,
                 img_suffix: str = '.jpg', versions: Sequence[int] = (0,), add_hands_mean: bool = False,
                 mano_model_path: Optional[str] = None, mocap_file: Optional[str] = None, **kwargs: Any) -> None:
        if add_hands_mean and not mano_model_path:
            raise ValueError('add_hands_mean=True needs mano_model_path (the hands_mean comes from the MANO file).')
        self.split = split
        self.img_dir = img_dir or f'{split}/rgb'
        self.img_suffix = img_suffix
        self.versions = tuple(versions)
        self.hands_mean = None
        if add_hands_mean:
            from opentad_lora.models.hamer.mano_io import load_mano_model
            self.hands_mean = load_mano_model(mano_model_path)['hands_mean'].astype(np.float32)
        self.mocap = self._load_mocap(mocap_file) if mocap_file else None
        super().__init__(data_root=data_root, **kwargs)

    @staticmethod
    def _load_mocap(path: str) -> Dict[str, np.ndarray]:
        try:
            with np.load(path) as data:
                pose, betas = np.asarray(data['hand_pose'], np.float32), np.asarray(data['betas'], np.float32)
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f'Cannot read MoCap file {path} (needs arrays hand_pose, betas): {err}') from None
        if pose.ndim != 2 or pose.shape[1] != 48 or len(betas) != len(pose):
            raise ValueError(f'MoCap file {path}: hand_pose must be (N, 48) and betas (N, 10), got '
                             f'{pose.shape} and {betas.shape}')
        return dict(hand_pose=pose[:, 3:], betas=betas)

    def load_data_list(self) -> List[Dict[str, Any]]:
        root = Path(self.data_root)
        files = {key: root / f'{self.split}_{key}.json' for key in ('K', 'xyz', 'mano', 'verts')}
        lists = {key: _read_json_list(path, required=key in ('K', 'xyz')) for key, path in files.items()}
        num = len(lists['K'])
        for key, values in lists.items():
            if values is not None and len(values) != num:
                raise ValueError(f'{files[key]} has {len(values)} entries but {files["K"]} has {num}.')
        data_list = []
        for version in self.versions:
            for idx in range(num):
                info = dict(sample_idx=idx, img_path=str(root / self.img_dir / f'{idx + version * num:08d}'
                                                               f'{self.img_suffix}'),
                            K=np.asarray(lists['K'][idx], np.float32).reshape(3, 3),
                            keypoints_3d=np.asarray(lists['xyz'][idx], np.float32).reshape(-1, 3))
                if lists['mano'] is not None:
                    info.update(self._parse_mano(np.asarray(lists['mano'][idx], np.float32).reshape(-1),
                                                 files['mano'], idx))
                if lists['verts'] is not None:
                    info['vertices'] = np.asarray(lists['verts'][idx], np.float32).reshape(-1, 3)
                data_list.append(info)
        return data_list

    def _parse_mano(self, values: np.ndarray, path: Path, idx: int) -> Dict[str, np.ndarray]:
        if values.size < 58:
            raise ValueError(f'{path} entry {idx} has {values.size} values, expected >= 58 (48 pose + 10 shape).')
        pose = values[:48].copy()
        if self.hands_mean is not None:
            pose[3:] += self.hands_mean
        return dict(global_orient=axis_angle_to_rotmats(pose[:3]), hand_pose=axis_angle_to_rotmats(pose[3:]),
                    betas=values[48:58].copy())

    def prepare_data(self, idx: int) -> Any:
        info = self.get_data_info(idx)
        if self.mocap is not None:
            pick = np.random.randint(len(self.mocap['betas']))
            info['mocap_hand_pose'] = axis_angle_to_rotmats(self.mocap['hand_pose'][pick])
            info['mocap_betas'] = self.mocap['betas'][pick]
        return self.pipeline(info)
