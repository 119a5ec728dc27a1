"""Turn a folder of CAD programs (e.g. the CAD-Recode dataset, which ships ``.py`` files only) into a dataset of
(point cloud, program, mesh) triples: each program runs in the CAD sandbox, its mesh is sampled on the surface."""
import json
from pathlib import Path
from typing import Dict, Union

import numpy as np

from .io import write_mesh, write_points


def programs_to_dataset(programs_dir: Union[str, Path], out_dir: Union[str, Path], split: str,
                        num_surface_points: int = 8192, mesher: str = 'cadquery', timeout: float = 3.0,
                        seed: int = 0) -> Dict[str, int]:
    """Execute every ``*.py`` in ``programs_dir`` (sorted) and write ``out_dir/<split>/{points,code,mesh}/`` and
    ``out_dir/<split>.json`` for ``CADRecodeDataset``.

    Points are ``num_surface_points`` uniform surface samples in code units, each followed by its triangle's unit
    normal (``(N, 6)``), so both CAD-Recode recipes read them (v1.5 drops the normals); the pipeline fits them to
    [-1, 1] and keeps 256. Meshes are binary STL, the ground truth of ``CADMetric``.
    Programs that fail in the sandbox are skipped.

    Returns:
        ``dict(written=..., skipped=...)``.
    """
    from opentad_lora.evaluation.cad.functional import sample_surface
    from opentad_lora.evaluation.cad.sandbox import CodeSandbox

    out_dir = Path(out_dir)
    for sub in ('points', 'code', 'mesh'):
        (out_dir / split / sub).mkdir(parents=True, exist_ok=True)
    rng, data_list, skipped = np.random.default_rng(seed), [], 0
    with CodeSandbox(mesher=mesher, timeout=timeout) as sandbox:
        for program in sorted(Path(programs_dir).glob('*.py')):
            code = program.read_text(encoding='utf-8')
            result = sandbox.run(code)
            if not result.valid:
                skipped += 1
                continue
            paths = {key: f'{split}/{key[:-5]}/{program.stem}{suffix}' for key, suffix in
                     (('points_path', '.npy'), ('code_path', '.py'), ('mesh_path', '.stl'))}
            write_points(out_dir / paths['points_path'],
                         sample_surface(result.vertices, result.faces, num_surface_points, rng, normals=True))
            (out_dir / paths['code_path']).write_text(code, encoding='utf-8')
            write_mesh(out_dir / paths['mesh_path'], result.vertices, result.faces)
            data_list.append(dict(points_path=paths['points_path'], code_path=paths['code_path'],
                                  gt_mesh_path=paths['mesh_path']))
    annotation = dict(metainfo=dict(dataset='cad_programs', source=str(programs_dir)), data_list=data_list)
    (out_dir / f'{split}.json').write_text(json.dumps(annotation, indent=1))
    return dict(written=len(data_list), skipped=skipped)
