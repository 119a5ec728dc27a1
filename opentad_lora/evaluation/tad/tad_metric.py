"""``TADmAPMetric``: ActivityNet/THUMOS-style detection mAP at several tIoU thresholds, OpenTAD's numbers."""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from opentad_lora.datasets.tad.annotations import load_class_map
from opentad_lora.registry import METRICS, TASK_UTILS

from .functional import Detection, mean_average_precision
from .ground_truth import load_ground_truth


@METRICS.register_module()
class TADmAPMetric(BaseMetric):
    """Per-class AP and mAP at each tIoU threshold, and their mean (``average_mAP``), as OpenTAD computes them.

    The model predicts each sliding window separately; this metric pools the windows of each video, runs the
    per-video post-processing (OpenTAD's ``batched_nms``, rounding as OpenTAD stores results) and evaluates against
    the annotation file with OpenTAD's rules (:mod:`.ground_truth`): duplicated and zero-length ground truth is
    dropped, every label of the subset's ground truth is a class (``Ambiguous`` too, logged), predictions for
    videos without ground truth are false positives (logged), predictions of labels without ground truth are not
    evaluated, and a video without predictions only lowers recall.

    Args:
        ann_file: Annotation JSON (OpenTAD format).
        subset: Subset evaluated, e.g. ``'validation'``.
        tiou_thresholds: tIoU thresholds.
        class_map: Class map file; default: the classes of the dataset's ``metainfo``.
        post_processing: Config of the per-video post-processor (``TASK_UTILS``), default ``TADPostProcessor``.
        result_file: When set, write the final detections as OpenTAD's result JSON (``{"results": {video:
            [{"segment", "label", "score"}]}}``, plus ActivityNet's ``version`` and ``external_data``).
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

    def _final_detections(self, results: List[dict], classes: List[str]) -> Dict[str, List[dict]]:
        """``{video: [dict(segment, label, score)]}`` after post-processing, videos in the order they came."""
        from opentad_lora.models.tad.post_processing import merge_windows

        final = {}
        for video_name, pred in merge_windows(results).items():
            if pred['labels'].numel() and int(pred['labels'].max()) >= len(classes):
                raise ValueError(f'TADmAPMetric: video {video_name} has a prediction of class '
                                 f'{int(pred["labels"].max())} but the class map has {len(classes)} classes; '
                                 'the model and the class map do not match')
            segments, scores, labels = self.post_processor(pred['segments'], pred['scores'], pred['labels'])
            final[video_name] = [dict(segment=[start, end], label=classes[label], score=score)
                                 for (start, end), score, label in zip(segments.tolist(), scores.tolist(),
                                                                       labels.tolist())]
        return final

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        logger = MMLogger.get_current_instance()
        classes = self._class_names()
        ground_truth = load_ground_truth(self.ann_file, self.subset)
        if not ground_truth:
            raise ValueError(f'TADmAPMetric: {self.ann_file} has no ground truth of positive length in subset '
                             f'{self.subset!r}; check subset= (OpenTAD names them "training" / "validation")')
        final = self._final_detections(results, classes)
        extra_labels = sorted({inst.label for inst in ground_truth} - set(classes))
        if extra_labels:
            logger.warning(f'TADmAPMetric: labels {extra_labels} of subset {self.subset!r} of {self.ann_file} are '
                           'not in the class map; they count as classes the model never predicts (AP 0), as in '
                           "OpenTAD's evaluation")
        gt_videos = {inst.video for inst in ground_truth}
        no_gt = [video for video in final if video not in gt_videos]
        if no_gt:
            logger.warning(f'TADmAPMetric: {len(no_gt)} videos with predictions have no ground truth in subset '
                           f'{self.subset!r} of {self.ann_file} (e.g. {no_gt[0]}); their predictions are false '
                           "positives, as in OpenTAD's evaluation")
        if self.result_file:
            dump_result_file(final, self.result_file)
        detections = [Detection(video, det['segment'][0], det['segment'][1], det['label'], det['score'])
                      for video, dets in final.items() for det in dets]
        eval_classes, ap, mean_ap = mean_average_precision(ground_truth, detections, self.tiou_thresholds)
        logger.info('\n' + format_map_table(eval_classes, ap, mean_ap, self.tiou_thresholds))
        metrics = {f'mAP@{t:.2f}': float(m) for t, m in zip(self.tiou_thresholds, mean_ap)}
        metrics['average_mAP'] = float(mean_ap.mean())
        return metrics


def dump_result_file(final: Dict[str, List[dict]], path: str) -> None:
    """Write detections as OpenTAD's result JSON (``results`` is the key its evaluator reads)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(dict(version='opentad_lora', results=final, external_data={}), f)


def load_result_file(path: str) -> List[Detection]:
    """Detections of an OpenTAD result JSON (ours or OpenTAD's ``result_detection.json``), in file order.

    Raises:
        ValueError: naming the file when it has no ``results`` mapping of detections.
    """
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get('results'), dict):
        raise ValueError(f'{path} is not a detection result JSON: it needs a "results" mapping '
                         '{video: [{"segment": [start, end], "label": name, "score": s}]}')
    return [Detection(video, float(det['segment'][0]), float(det['segment'][1]), det['label'], det['score'])
            for video, dets in data['results'].items() for det in dets]


def format_map_table(classes: Sequence[str], ap: np.ndarray, mean_ap: np.ndarray,
                     tiou_thresholds: Sequence[float]) -> str:
    """Plain-text table: one row per evaluated class, then the mAP row and the average."""
    header = f'{"class":<24}' + ''.join(f'{"tIoU " + format(t, ".2f"):>11}' for t in tiou_thresholds) + f'{"avg":>9}'
    lines = [header, '-' * len(header)]
    for name, row in zip(classes, ap):
        lines.append(f'{name[:24]:<24}' + ''.join(f'{100 * v:>11.2f}' for v in row) + f'{100 * row.mean():>9.2f}')
    lines.append('-' * len(header))
    lines.append(f'{"mAP (%)":<24}' + ''.join(f'{100 * v:>11.2f}' for v in mean_ap) + f'{100 * mean_ap.mean():>9.2f}')
    return '\n'.join(lines)
