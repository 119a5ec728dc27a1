"""``COLMAPMultiViewDataset``: multi-view sequences of ETH3D-style scenes (images + COLMAP model + depth)."""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from mmengine.structures import BaseDataElement
from torch.utils.data import Dataset

from opentad_lora.registry import DATASETS
from .colmap import read_model
from .geometry import camera_intrinsics, qvec_to_rotmat, resize_nearest, scale_intrinsics, sparse_depth_map


_IMREAD_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


@dataclass
class Frame:
    """What one view needs: files, world-to-camera pose, intrinsics at the camera's size, observed 3D points."""

    scene: str
    name: str
    image_path: str
    depth_path: Optional[str]
    mask_path: Optional[str]
    rotation: np.ndarray
    translation: np.ndarray
    intrinsics: np.ndarray
    size: Tuple[int, int]
    points: np.ndarray


@DATASETS.register_module()
class COLMAPMultiViewDataset(Dataset):
    """Sequences of ``num_views`` frames of scenes laid out as ETH3D's high-res multi-view download.

    Each scene directory holds ``<image_dir>/<NAME>`` for every image ``NAME`` of the COLMAP model in
    ``<sparse_dir>`` (text or binary) and, optionally, dense depth ``<depth_dir>/<basename of NAME>`` in ETH3D's raw
    float32 format (``inf`` = invalid) or ``.npy``. Frames are ordered by name; a split keeps the first
    ``train_ratio`` of each scene's frames (``'train'``) or the rest (``'val'``). Sequences are windows of
    ``num_views`` consecutive frames with ``stride`` (50% overlap by default) or, with ``sampling='random'``, a
    window's first frame plus random others of the scene. Images are resized to ``img_size`` with the intrinsics
    adjusted; depth is the ground truth (``'dense'``) or the model's 3D points projected into each view
    (``'sparse'``, only points the image observes, so occluded points never count).

    ETH3D's occlusion masks (``masks_for_images/dslr_images/<image stem>.png`` in the multi-view training data) are
    used when present: every pixel whose mask value is not 0 (a label for regions the laser ground truth does not
    describe, e.g. occluders missing from the scan) is left out of ``valid_mask``, for both depth sources. Frames
    without a mask file are used as they are; ``metainfo['masked_frames']`` counts the frames that have one.

    A sample is ``dict(inputs=(S, 3, H, W) float in [0, 1], data_samples=BaseDataElement)`` whose data fields are
    ``depth`` and ``valid_mask`` (S, H, W), ``extrinsics`` (S, 3, 4, world-to-camera) and ``intrinsics`` (S, 3, 3),
    and whose metainfo is ``scene`` and ``frame_names`` (a data element, so MMEngine's ``pseudo_collate`` keeps a
    list of samples per batch).

    Args:
        data_root: Directory of scene directories.
        scenes: Scene names to use (default: every sub-directory that has ``sparse_dir``).
        num_views: Frames per sequence.
        stride: Window step (default ``num_views // 2``).
        sampling: ``'window'`` (consecutive frames) or ``'random'``.
        split: ``'all'``, ``'train'`` or ``'val'``.
        train_ratio: Fraction of each scene's frames in the train split.
        img_size: Output ``(H, W)``, or one int for a square image (the seed's 518x518).
        depth_source: ``'sparse'`` (projected COLMAP points) or ``'dense'`` (ground-truth depth files).
        depth_range: ``(min, max)`` depth kept as valid.
        sparse_dir: COLMAP model directory inside a scene.
        image_dir: Image root inside a scene (image names are relative to it).
        depth_dir: Dense depth directory inside a scene (None: no dense depth).
        depth_format: ``'eth3d'`` (raw float32 of the camera's size) or ``'npy'``.
        model_format: ``'auto'``, ``'.txt'`` or ``'.bin'``.
        mask_dir: Occlusion-mask directory inside a scene (``<stem>.png``, 0 = usable); None: no masks.
    """

    def __init__(self, data_root: str, scenes: Optional[Sequence[str]] = None, num_views: int = 8,
                 stride: Optional[int] = None, sampling: str = 'window', split: str = 'all',
                 train_ratio: float = 0.85, img_size: Union[int, Sequence[int]] = 518, depth_source: str = 'sparse',
                 depth_range: Sequence[float] = (1e-5, float('inf')),
                 sparse_dir: str = 'dslr_calibration_undistorted', image_dir: str = 'images',
                 depth_dir: Optional[str] = 'ground_truth_depth/dslr_images', depth_format: str = 'eth3d',
                 model_format: str = 'auto', mask_dir: Optional[str] = 'masks_for_images/dslr_images') -> None:
        super().__init__()
        checks = dict(sampling=(sampling, ('window', 'random')), split=(split, ('all', 'train', 'val')),
                      depth_source=(depth_source, ('sparse', 'dense')), depth_format=(depth_format, ('eth3d', 'npy')))
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f'{key} must be one of {allowed}, got {value!r}.')
        if depth_source == 'dense' and depth_dir is None:
            raise ValueError("depth_source='dense' needs a depth_dir.")
        if not os.path.isdir(data_root):
            raise FileNotFoundError(f'Dataset root not found: {data_root}')
        self.data_root = data_root
        self.num_views = num_views
        self.stride = stride or max(num_views // 2, 1)
        self.sampling = sampling
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.depth_source = depth_source
        self.depth_range = tuple(depth_range)
        self.depth_format = depth_format
        if scenes is None:
            scenes = sorted(d for d in os.listdir(data_root) if os.path.isdir(os.path.join(data_root, d, sparse_dir)))
        if not scenes:
            raise FileNotFoundError(f'No scene with a {sparse_dir}/ directory in {data_root}.')
        self.frames: Dict[str, List[Frame]] = {}
        self.windows: List[Tuple[str, int]] = []
        for scene in scenes:
            frames = self._load_scene(scene, sparse_dir, image_dir, depth_dir, model_format, mask_dir)
            cut = int(round(len(frames) * train_ratio))
            frames = {'all': frames, 'train': frames[:cut], 'val': frames[cut:]}[split]
            if len(frames) < num_views:
                raise ValueError(f'Scene {scene!r} has {len(frames)} frames in split {split!r}, fewer than '
                                 f'num_views={num_views}.')
            self.frames[scene] = frames
            starts = list(range(0, len(frames) - num_views + 1, self.stride))
            if starts[-1] != len(frames) - num_views:
                starts.append(len(frames) - num_views)
            self.windows += [(scene, start) for start in starts]
        masked = sum(f.mask_path is not None for frames in self.frames.values() for f in frames)
        self.metainfo = dict(dataset_name='COLMAPMultiViewDataset', scenes=list(self.frames), masked_frames=masked)

    def _load_scene(self, scene: str, sparse_dir: str, image_dir: str, depth_dir: Optional[str],
                    model_format: str, mask_dir: Optional[str]) -> List[Frame]:
        root = os.path.join(self.data_root, scene)
        model = read_model(os.path.join(root, sparse_dir), model_format)
        frames = []
        for image in sorted(model.images.values(), key=lambda im: im.name):
            camera = model.cameras[image.camera_id]
            observed = image.point3D_ids[image.point3D_ids >= 0]
            points = np.array([model.points3D[int(i)].xyz for i in observed if int(i) in model.points3D])
            depth_path = mask_path = None
            base = os.path.basename(image.name)
            if depth_dir is not None:
                depth_path = os.path.join(root, depth_dir, base if self.depth_format == 'eth3d' else
                                          os.path.splitext(base)[0] + '.npy')
            if mask_dir is not None:
                mask_path = os.path.join(root, mask_dir, os.path.splitext(base)[0] + '.png')
                mask_path = mask_path if os.path.isfile(mask_path) else None
            frames.append(Frame(scene, image.name, os.path.join(root, image_dir, image.name), depth_path, mask_path,
                                qvec_to_rotmat(image.qvec), np.asarray(image.tvec, dtype=np.float64),
                                camera_intrinsics(camera), (camera.height, camera.width), points.reshape(-1, 3)))
        return frames

    def __len__(self) -> int:
        return len(self.windows)

    def sequence(self, index: int) -> List[Frame]:
        """The frames of sample ``index``: a window, or its first frame and random others (``'random'``)."""
        scene, start = self.windows[index]
        frames = self.frames[scene]
        if self.sampling == 'window':
            return frames[start:start + self.num_views]
        others = [i for i in range(len(frames)) if i != start]
        picks = np.random.choice(others, size=self.num_views - 1, replace=False)
        return [frames[start]] + [frames[i] for i in picks]

    def __getitem__(self, index: int) -> dict:
        frames = self.sequence(index)
        views = [self.load_frame(frame) for frame in frames]
        stacked = {key: torch.from_numpy(np.stack([v[key] for v in views])) for key in views[0]}
        sample = BaseDataElement(metainfo=dict(scene=self.windows[index][0], frame_names=[f.name for f in frames]))
        sample.set_data({key: value for key, value in stacked.items() if key != 'image'})
        return dict(inputs=stacked['image'], data_samples=sample)

    def load_frame(self, frame: Frame) -> Dict[str, np.ndarray]:
        """Image (3, H, W) in [0, 1], depth and validity (H, W), extrinsics (3, 4) and intrinsics (3, 3)."""
        height, width = self.img_size
        # Decode large JPEGs at 1/2, 1/4 or 1/8 size when that still covers the output (ETH3D's 6048x4032 -> 518).
        reduce = max([f for f in (2, 4, 8) if frame.size[0] // f >= height and frame.size[1] // f >= width] or [1])
        image = cv2.imread(frame.image_path, _IMREAD_FLAGS[reduce])
        if image is None:
            raise FileNotFoundError(f'Cannot read image {frame.image_path}')
        # Intrinsics refer to the camera's size; a differently sized image file (e.g. a downscaled copy) scales them.
        intrinsics = scale_intrinsics(frame.intrinsics, width / frame.size[1], height / frame.size[0])
        interp = cv2.INTER_AREA if width * height < image.shape[0] * image.shape[1] else cv2.INTER_LINEAR
        image = cv2.resize(image, (width, height), interpolation=interp)[:, :, ::-1]
        if self.depth_source == 'dense':
            depth = resize_nearest(self._read_depth(frame), height, width)
        else:
            depth = sparse_depth_map(frame.points, frame.rotation, frame.translation, intrinsics, height, width)
        valid = np.isfinite(depth) & (depth >= self.depth_range[0]) & (depth <= self.depth_range[1])
        if frame.mask_path is not None:
            valid &= resize_nearest(self._read_mask(frame.mask_path), height, width) == 0
        return dict(image=np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0,
                    depth=np.where(valid, depth, 0.0).astype(np.float32), valid_mask=valid,
                    extrinsics=np.concatenate([frame.rotation, frame.translation[:, None]], 1).astype(np.float32),
                    intrinsics=intrinsics.astype(np.float32))

    @staticmethod
    def _read_mask(path: str) -> np.ndarray:
        """An occlusion mask as a 2D array of labels (0 = usable)."""
        mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2:
            raise ValueError(f'{path}: not a single-channel mask image '
                             f'({"unreadable" if mask is None else f"shape {mask.shape}"}).')
        return mask

    def _read_depth(self, frame: Frame) -> np.ndarray:
        if frame.depth_path is None or not os.path.isfile(frame.depth_path):
            raise FileNotFoundError(f'Depth file not found: {frame.depth_path}')
        if self.depth_format == 'npy':
            depth = np.load(frame.depth_path, allow_pickle=False)
        else:
            depth = np.fromfile(frame.depth_path, dtype='<f4')
            if depth.size != frame.size[0] * frame.size[1]:
                raise ValueError(f'{frame.depth_path}: {depth.size} float32 values, expected {frame.size[0]}x'
                                 f'{frame.size[1]} (ETH3D raw depth of the camera size).')
            depth = depth.reshape(frame.size)
        if depth.ndim != 2:
            raise ValueError(f'{frame.depth_path}: depth must be a 2D array, got shape {depth.shape}.')
        return depth.astype(np.float32)
