"""``CADMetric``: Chamfer distance, volumetric IoU and invalidity ratio of generated CAD programs (CAD-Recode)."""
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from opentad_lora.datasets.cad.io import read_mesh
from opentad_lora.registry import METRICS
from .functional import Mesh, mesh_chamfer_distance, normalize_mesh, volumetric_iou
from .sandbox import CodeSandbox


@METRICS.register_module()
class CADMetric(BaseMetric):
    """Executes each predicted program in a sandbox and compares its mesh with the ground truth.

    Both meshes are fitted to ``[0, 1]^3`` (bounding-box centre, largest extent); then
    ``mean_cd``/``median_cd`` = Chamfer distance x 1000 over valid predictions (``n_points`` samples per mesh),
    ``iou`` = mean volumetric IoU x 100 over valid predictions, ``ir`` = percentage of invalid predictions
    (exception, timeout, memory, refused operation, crash or fewer than ``min_faces`` triangles), as in
    CAD-Recode / cadrille; ``num_samples`` and ``num_valid`` count the scored samples and the valid predictions,
    and a warning names how many predictions are invalid and why (so a ``nan`` CD/IoU is explained). The ground
    truth is the mesh at ``gt_mesh_path`` when the sample has one (``.stl``, ``.ply``, ``.npz``), otherwise the
    sample's ground-truth program run in the same sandbox (cached).

    Args:
        n_points: Surface samples per mesh for the Chamfer distance (CAD-Recode: 8192).
        iou_resolution: Ray-casting grid of the IoU (see ``functional.volumetric_iou``).
        mesher: How a program becomes a mesh (``'cadquery'``, ``'arrays'`` or ``'module:function'``; see
            ``CodeSandbox``).
        timeout: Seconds per program (CAD-Recode: 3).
        memory_mb: Extra address space per program.
        min_faces: Triangles a valid shape needs at least.
        seed: Seed of the surface sampling, so a result is repeatable.
        mesher_kwargs: Keyword arguments of the mesher.
    """

    default_prefix = 'cad'

    def __init__(self, n_points: int = 8192, iou_resolution: int = 64, mesher: str = 'cadquery',
                 timeout: float = 3.0, memory_mb: int = 2048, min_faces: int = 3, seed: int = 0,
                 mesher_kwargs: Optional[Dict[str, Any]] = None, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if mesher == 'cadquery':
            import importlib.util
            if importlib.util.find_spec('cadquery') is None:
                raise ImportError('CADMetric(mesher="cadquery") executes programs with CadQuery: '
                                  'pip install "opentad_lora[cad]" (or pip install cadquery)')
        self.n_points, self.iou_resolution, self.seed = int(n_points), int(iou_resolution), int(seed)
        self.sandbox_cfg = dict(mesher=mesher, timeout=timeout, memory_mb=memory_mb, min_faces=min_faces,
                                mesher_kwargs=mesher_kwargs)
        self._sandbox: Optional[CodeSandbox] = None
        self._gt_cache: Dict[str, Optional[Mesh]] = {}

    @property
    def sandbox(self) -> CodeSandbox:
        if self._sandbox is None:
            self._sandbox = CodeSandbox(**self.sandbox_cfg)
        return self._sandbox

    def _ground_truth(self, sample: Dict[str, Any]) -> Optional[Mesh]:
        if sample.get('gt_mesh_path'):
            return read_mesh(sample['gt_mesh_path'])
        code = sample['gt_code']
        if code not in self._gt_cache:
            result = self.sandbox.run(code)
            if not result.valid:
                MMLogger.get_current_instance().warning(
                    f'CADMetric: the ground-truth program of sample {sample.get("sample_idx")} is invalid '
                    f'({result.status}: {result.error}); the sample is skipped.')
            self._gt_cache[code] = (result.vertices, result.faces) if result.valid else None
        return self._gt_cache[code]

    def score(self, pred_code: str, gt_mesh: Mesh) -> Dict[str, Any]:
        """``dict(status, cd, iou)`` of one prediction against a ground-truth mesh (cd/iou None when invalid)."""
        result = self.sandbox.run(pred_code)
        if not result.valid:
            error = (result.error or '').strip().splitlines()
            return dict(status=result.status, cd=None, iou=None, error=error[-1][:200] if error else '')
        pred = (normalize_mesh(result.vertices), result.faces)
        gt = (normalize_mesh(gt_mesh[0]), gt_mesh[1])
        return dict(status='ok', cd=mesh_chamfer_distance(pred, gt, self.n_points, self.seed),
                    iou=volumetric_iou(pred, gt, self.iou_resolution))

    def process(self, data_batch: Any, data_samples: Sequence[Dict[str, Any]]) -> None:
        for sample in data_samples:
            gt_mesh = self._ground_truth(sample)
            if gt_mesh is not None:
                self.results.append(self.score(sample['pred_code'], gt_mesh))

    @staticmethod
    def explain_invalid(results: List[Dict[str, Any]]) -> Optional[str]:
        """One line on the invalid predictions (count per status, one example error each); None when all are
        valid. Logged by ``compute_metrics``, so a ``nan`` CD/IoU never comes without its reason."""
        invalid = [r for r in results if r['cd'] is None]
        if not results:
            return ('CADMetric: no sample was scored (every ground truth was invalid or the split is empty): CD, IoU '
                    'and IR are nan.')
        if not invalid:
            return None
        examples = {}
        for r in invalid:
            examples.setdefault(r['status'], r.get('error', ''))
        reasons = ', '.join(f'{status} {count}' + (f' (e.g. {examples[status]!r})' if examples[status] else '')
                            for status, count in Counter(r['status'] for r in invalid).most_common())
        valid = len(results) - len(invalid)
        consequence = ('no prediction is valid, so CD and IoU are nan' if valid == 0 else
                       f'CD and IoU are over the {valid} valid ones')
        return f'CADMetric: {len(invalid)} of {len(results)} predictions are invalid: {reasons}; {consequence}.'

    def compute_metrics(self, results: List[Dict[str, Any]]) -> Dict[str, float]:
        explanation = self.explain_invalid(results)
        if explanation:
            MMLogger.get_current_instance().warning(explanation)
        cds = np.array([r['cd'] for r in results if r['cd'] is not None], dtype=np.float64)
        ious = np.array([r['iou'] for r in results if r['iou'] is not None], dtype=np.float64)
        total = len(results)
        nan = float('nan')
        return dict(mean_cd=float(cds.mean() * 1e3) if len(cds) else nan,
                    median_cd=float(np.median(cds) * 1e3) if len(cds) else nan,
                    iou=float(ious.mean() * 100) if len(ious) else nan,
                    ir=100.0 * (total - len(cds)) / total if total else nan, num_samples=float(total),
                    num_valid=float(len(cds)))
