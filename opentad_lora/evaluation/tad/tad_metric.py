"""``TADmAPMetric``: ActivityNet/THUMOS-style detection mAP at several tIoU thresholds."""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from opentad_lora.datasets.tad.annotations import load_annotations, load_class_map
from opentad_lora.registry import METRICS, TASK_UTILS

from .functional import mean_average_precision


@METRICS.register_module()
class TADmAPMetric(BaseMetric):
    """Per-class AP and mAP at each tIoU threshold, and their mean (``average_mAP``).

    The model predicts each sliding window separately; this metric pools the windows of each video, runs the
    per-video post-processing (soft-NMS / NMS, score voting, ``max_seg_num``) and evaluates against the annotation
    file. Predictions for videos that are not in the evaluated subset are ignored (and counted in the log); a video
    without predictions only lowers recall. Classes without ground truth in the subset are left out of the mean.

    Args:
        ann_file: Annotation JSON (OpenTAD format).
        subset: Subset evaluated, e.g. ``'validation'``.
        tiou_thresholds: tIoU thresholds.
        class_map: Class map file; default: the classes of the dataset's ``metainfo``.
        post_processing: Config of the per-video post-processor (``TASK_UTILS``), default ``TADPostProcessor``.
        result_file: When set, write the final detections as OpenTAD/ActivityNet result JSON.
        collect_device: Where to gather results in distributed runs.
        prefix: Key prefix, default ``'tad'``.
    """

    default_prefix = 'tad'

    def __init__(self, ann_file: str, subset: str = 'validation',
                 tiou_thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7), class_map: Optional[str] = None,
                 post_processing: Optional[dict] = None, result_file: Optional[str] = None,
                 collect_device: str = 'cpu', prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file = ann_file
        self.subset = subset
        self.tiou_thresholds = [float(t) for t in tiou_thresholds]
        self.class_map = class_map
        post_cfg = dict(type='TADPostProcessor')
        post_cfg.update(post_processing or {})
        self.post_processor = TASK_UTILS.build(post_cfg)
        self.result_file = result_file

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Keep each window's predictions (already in video seconds) with its video name."""
        for sample in data_samples:
            self.results.append(dict(
                video_name=sample['video_name'], pred_segments=np.asarray(sample['pred_segments']),
                pred_scores=np.asarray(sample['pred_scores']), pred_labels=np.asarray(sample['pred_labels'])))

    def _class_names(self) -> List[str]:
        if self.class_map is not None:
            return load_class_map(self.class_map)
        classes = (self.dataset_meta or {}).get('classes')
        if not classes:
            raise ValueError('TADmAPMetric needs class_map= or a dataset whose metainfo has "classes"')
        return list(classes)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        from opentad_lora.models.tad.post_processing import merge_windows

        logger = MMLogger.get_current_instance()
        classes = self._class_names()
        videos = {v.video_name: v for v in load_annotations(self.ann_file, classes, self.subset)}
        ground_truth: Dict[int, Dict[str, np.ndarray]] = {}
        for video in videos.values():
            for cls in np.unique(video.labels):
                ground_truth.setdefault(int(cls), {})[video.video_name] = video.segments[video.labels == cls]
        merged = merge_windows(results)
        unknown = sorted(set(merged) - set(videos))
        if unknown:
            logger.warning(f'TADmAPMetric: ignored predictions for {len(unknown)} videos not in subset '
                           f'{self.subset!r} of {self.ann_file} (e.g. {unknown[0]})')
        detections: Dict[int, list] = {}
        final = {}
        for video_name in sorted(set(merged) & set(videos)):
            pred = merged[video_name]
            segments, scores, labels = self.post_processor(pred['segments'], pred['scores'], pred['labels'])
            final[video_name] = (segments.numpy(), scores.numpy(), labels.numpy())
            for (start, end), score, label in zip(final[video_name][0], final[video_name][1], final[video_name][2]):
                detections.setdefault(int(label), []).append((video_name, float(start), float(end), float(score)))
        ap, mean_ap = mean_average_precision(ground_truth, detections, len(classes), self.tiou_thresholds)
        logger.info('\n' + format_map_table(classes, ap, mean_ap, self.tiou_thresholds))
        if self.result_file:
            self._dump(final, classes)
        metrics = {f'mAP@{t:.2f}': float(m) for t, m in zip(self.tiou_thresholds, mean_ap)}
        metrics['average_mAP'] = float(mean_ap.mean())
        return metrics

    def _dump(self, final: dict, classes: List[str]) -> None:
        """Write ``{"results": {video: [{"segment", "label", "score"}]}}`` (ActivityNet submission format)."""
        out = {video: [dict(segment=[round(float(s), 4), round(float(e), 4)], label=classes[int(lab)],
                            score=round(float(score), 6)) for (s, e), score, lab in zip(*pred)]
               for video, pred in final.items()}
        os.makedirs(osp.dirname(osp.abspath(self.result_file)), exist_ok=True)
        with open(self.result_file, 'w', encoding='utf-8') as f:
            json.dump(dict(version='opentad_lora', results=out, external_data={}), f)


def format_map_table(classes: Sequence[str], ap: np.ndarray, mean_ap: np.ndarray,
                     tiou_thresholds: Sequence[float]) -> str:
    """Plain-text table: one row per class with ground truth, then the mAP row and the average."""
    header = f'{"class":<24}' + ''.join(f'{"tIoU " + format(t, ".2f"):>11}' for t in tiou_thresholds) + f'{"avg":>9}'
    lines = [header, '-' * len(header)]
    for name, row in zip(classes, ap):
        if not np.isnan(row[0]):
            lines.append(f'{name[:24]:<24}' + ''.join(f'{100 * v:>11.2f}' for v in row) + f'{100 * row.mean():>9.2f}')
    lines.append('-' * len(header))
    lines.append(f'{"mAP (%)":<24}' + ''.join(f'{100 * v:>11.2f}' for v in mean_ap) + f'{100 * mean_ap.mean():>9.2f}')
    return '\n'.join(lines)
