"""``CADRecodeDataset``: pairs of point clouds (``.npy``/``.ply``) and CadQuery programs (``.py``)."""
from pathlib import Path
from typing import List, Optional

from mmengine.dataset import BaseDataset

from opentad_lora.registry import DATASETS

POINT_SUFFIXES = ('.npy', '.ply')


@DATASETS.register_module()
class CADRecodeDataset(BaseDataset):
    """Point cloud -> program pairs, listed in an annotation file or found by file stem in a folder.

    Annotation file (OpenMMLab format, paths relative to ``data_root``)::

        {"metainfo": {"dataset": "..."},
         "data_list": [{"points_path": "train/points/0000.npy", "code_path": "train/code/0000.py",
                        "gt_mesh_path": "train/mesh/0000.stl"}, ...]}

    ``code_path`` may be missing at test time when ``gt_mesh_path`` gives the ground truth (e.g. DeepCAD meshes).
    Without ``ann_file``, ``data_prefix=dict(points='...', code='...')`` folders are paired by file stem.
    """

    METAINFO = dict(dataset='cad_recode')

    def __init__(self, ann_file: str = '', data_root: str = '', data_prefix: Optional[dict] = None,
                 **kwargs) -> None:
        super().__init__(ann_file=ann_file, data_root=data_root, data_prefix=data_prefix or {}, **kwargs)

    def _path(self, value: Optional[str]) -> Optional[str]:
        if not value:
            return None
        path = Path(value) if Path(value).is_absolute() else Path(self.data_root) / value
        if not path.is_file():
            raise FileNotFoundError(f'{path} (listed in {self.ann_file or self.data_prefix}) does not exist.')
        return str(path)

    def parse_data_info(self, raw_data_info: dict) -> dict:
        if 'points_path' not in raw_data_info:
            raise KeyError(f'An entry of {self.ann_file} has no "points_path": {raw_data_info}.')
        if not (raw_data_info.get('code_path') or raw_data_info.get('gt_mesh_path')):
            raise KeyError(f'An entry of {self.ann_file} has neither "code_path" nor "gt_mesh_path".')
        info = dict(raw_data_info)
        for key in ('points_path', 'code_path', 'gt_mesh_path'):
            if key in info:
                info[key] = self._path(info[key])
        return info

    def load_data_list(self) -> List[dict]:
        if self.ann_file:
            return super().load_data_list()
        points_dir, code_dir = self.data_prefix.get('points'), self.data_prefix.get('code')
        if not points_dir or not code_dir:
            raise ValueError('CADRecodeDataset needs ann_file or data_prefix=dict(points=..., code=...).')
        points = {p.stem: p for p in sorted(Path(points_dir).iterdir()) if p.suffix in POINT_SUFFIXES}
        codes = {p.stem: p for p in sorted(Path(code_dir).glob('*.py'))}
        stems = sorted(points.keys() & codes.keys())
        if not stems:
            raise FileNotFoundError(f'No point cloud/program pairs with matching names in {points_dir} and {code_dir}.')
        return [self.parse_data_info(dict(points_path=str(points[s].resolve()), code_path=str(codes[s].resolve())))
                for s in stems]
