"""Image classification dataset listed in a CSV file (``path,label`` rows), as CLIP fine-tuning sets often are."""
import csv
from pathlib import Path
from typing import List, Optional, Sequence

from mmengine.dataset import BaseDataset

from opentad_lora.registry import DATASETS
from .few_shot import apply_few_shot


@DATASETS.register_module()
class CSVImageDataset(BaseDataset):
    """Rows of a CSV with a header; ``path_column`` is an image path (relative to ``data_root`` or absolute) and
    ``label_column`` a class name or an integer label.

    Args:
        ann_file: The CSV file (relative to ``data_root`` unless absolute).
        data_root: Base folder of the images and the CSV.
        classes: Class names in label order. Default: the sorted distinct names when the labels are names, or
            ``'0'..'K-1'`` when they are integers.
        path_column / label_column: Column names.
        num_shots / shot_seed: Keep ``num_shots`` rows per class (see :func:`few_shot_indices`).
        pipeline: Transforms; default ``LoadImage`` then ``PackClsInputs``.
    """

    def __init__(self, ann_file: str, data_root: str = '', classes: Optional[Sequence[str]] = None,
                 path_column: str = 'path', label_column: str = 'label', num_shots: Optional[int] = None,
                 shot_seed: int = 0, pipeline: Optional[Sequence[dict]] = None, **kwargs) -> None:
        self.classes_arg = tuple(classes) if classes else None
        self.path_column, self.label_column = path_column, label_column
        self.num_shots, self.shot_seed = num_shots, shot_seed
        if pipeline is None:
            pipeline = [dict(type='LoadImage'), dict(type='PackClsInputs')]
        super().__init__(ann_file=ann_file, data_root=data_root, pipeline=pipeline, **kwargs)

    def load_data_list(self) -> List[dict]:
        """One ``dict(img_path, gt_label)`` per row, in file order (then the few-shot draw).

        Raises:
            FileNotFoundError / ValueError: naming the CSV file, and the row for a bad label.
        """
        path = Path(self.ann_file)
        if not path.is_file():
            raise FileNotFoundError(f'CSV annotation file {path} does not exist.')
        with open(path, newline='', encoding='utf-8') as handle:
            reader = csv.DictReader(handle)
            missing = {self.path_column, self.label_column} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f'CSV file {path} has no column(s) {sorted(missing)}; header: {reader.fieldnames}.')
            rows = [(row[self.path_column], row[self.label_column].strip()) for row in reader]
        if not rows:
            raise ValueError(f'CSV file {path} has no rows.')
        numeric = all(label.isdigit() for _, label in rows)
        if self.classes_arg:
            classes = self.classes_arg
        elif numeric:
            classes = tuple(str(i) for i in range(max(int(label) for _, label in rows) + 1))
        else:
            classes = tuple(sorted({label for _, label in rows}))
        index = {name: i for i, name in enumerate(classes)}
        root = Path(self.data_root or '')
        data_list = []
        for number, (img, label) in enumerate(rows, start=2):
            gt = int(label) if numeric and label not in index else index.get(label)
            if gt is None or not 0 <= gt < len(classes):
                raise ValueError(f'CSV file {path} line {number}: label {label!r} is not one of the classes.')
            data_list.append(dict(img_path=str(Path(img) if Path(img).is_absolute() else root / img), gt_label=gt))
        self._metainfo['classes'] = classes
        return apply_few_shot(data_list, self.num_shots, self.shot_seed)
