"""``TADDetector``: end-to-end temporal action detector (video backbone -> projection -> neck -> head)."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from torch import Tensor

from opentad_lora.peft import has_lora, mark_modules_to_save
from opentad_lora.registry import MODELS


@MODELS.register_module()
@MODELS.register_module(name='ActionFormer')
class TADDetector(BaseModel):
    """One-stage detector over a window of frames, OpenTAD's ``ActionFormer`` model in MMEngine form.

    The backbone maps the clip ``(B, 3, T, H, W)`` to features ``(B, C, T')``. They are optionally resampled to
    ``temporal_size`` steps (OpenTAD interpolates to the window length), zero-padded to the projection's
    ``max_seq_len`` (or, when longer, to a multiple of the coarsest stride x window), turned into a pyramid by the
    projection and neck, and decoded by the head. Parameter names are OpenTAD's, so its checkpoints load by name
    (see :mod:`opentad_lora.models.tad.opentad_checkpoint`).

    Coordinates, as in OpenTAD: data samples give ground truth in snippets (sampled frames) from the window start;
    grid step ``t`` of the finest level is snippet ``t * s`` with ``s = T / T'``. Predictions are returned per window
    in video seconds, clipped to ``[0, duration]``, before NMS; the metric merges the windows of a video.

    Args:
        backbone: Video backbone config, e.g. ``VisionTransformerAdapter`` / ``VisionTransformerQLoRA``.
        projection: ``Conv1DTransformerProj`` config.
        neck: ``FPNIdentity`` config.
        rpn_head: ``ActionFormerHead`` config (OpenTAD's key name).
        temporal_size: Resample backbone features to this length (None keeps ``T'``).
        test_cfg: ``dict(pre_nms_thresh=0.001, pre_nms_topk=2000)``: decoding before the metric's NMS.
        data_preprocessor: Default ``TADDataPreprocessor``.
        init_cfg: MMEngine init config.
    """

    def __init__(self, backbone: dict, projection: dict, neck: dict, rpn_head: dict,
                 temporal_size: Optional[int] = None, test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        preprocessor = data_preprocessor or dict(type='TADDataPreprocessor')
        if isinstance(preprocessor, dict):  # built from our registry, so no default scope is needed
            preprocessor = MODELS.build(preprocessor)
        super().__init__(data_preprocessor=preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.projection = MODELS.build(projection)
        self.neck = MODELS.build(neck)
        self.rpn_head = MODELS.build(rpn_head)
        if has_lora(self.backbone):  # the trained detector travels in the adapter files with the LoRA weights
            mark_modules_to_save(self, ['projection', 'neck', 'rpn_head'])
        self.temporal_size = temporal_size
        self.test_cfg = dict(pre_nms_thresh=0.001, pre_nms_topk=2000)
        unknown = sorted(set(test_cfg or {}) - set(self.test_cfg))
        if unknown:
            raise ValueError(f'TADDetector: unknown test_cfg keys {unknown}; expected {sorted(self.test_cfg)}')
        self.test_cfg.update(test_cfg or {})
        self.max_div_factor = self._max_div_factor()

    def _max_div_factor(self) -> int:
        """The coarsest stride x local window; ``max_seq_len`` must be a multiple of each level's."""
        max_seq_len, factor = self.projection.max_seq_len, 1
        for stride, window in zip(self.rpn_head.prior_generator.strides, self.projection.mha_win_size):
            level = stride * (window // 2) * 2 if window > 1 else stride
            if max_seq_len % level:
                raise ValueError(f'projection.max_seq_len={max_seq_len} must be divisible by each level\'s stride x '
                                 f'attention window: stride {stride}, window {window} needs a multiple of {level}')
            factor = max(factor, level)
        return factor

    def init_weights(self) -> None:
        """Nothing to do: every part is initialised (and the backbone loaded from its file) at construction.

        ``tools/test.py`` never calls this, so initialising here would make training and testing differ; MMEngine's
        default would also fail on the packed uint8 tensors of a 4-bit base while logging init statistics.
        """
        self._is_init = True

    @staticmethod
    @torch.compiler.disable
    def _valid_lens(data_samples: Sequence[BaseDataElement], device: torch.device) -> Tensor:
        """``(B,)`` real snippets of each window, made eagerly: traced, each sample's ``valid_len`` would be a
        constant of the compiled graph, recompiled when it changes (a short video's window). Called before any op,
        this graph break splits no graph (see :meth:`_targets`)."""
        return torch.tensor([sample.metainfo['valid_len'] for sample in data_samples], device=device)

    def _pad(self, feats: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        """Zero-pad to ``max_seq_len`` steps, or a longer input to the next multiple of :attr:`max_div_factor`."""
        length = feats.shape[-1]
        target = self.projection.max_seq_len
        if length > target:
            target = -(-length // self.max_div_factor) * self.max_div_factor
        if length == target:
            return feats, mask
        return F.pad(feats, (0, target - length)), F.pad(mask, (0, target - length), value=False)

    def extract_feat(self, inputs: Tensor, valid_len: Tensor) -> Tuple[List[Tensor], List[Tensor], float]:
        """Pyramid features and masks of a batch whose windows have ``valid_len`` real snippets, and the number of
        snippets per finest grid step.

        A step is valid when its first snippet is a real (not padded) one. Backbone features at padded steps are
        passed on unmasked; the projection masks every output.
        """
        feats = self.backbone(inputs).float()
        if self.temporal_size is not None and feats.shape[-1] != self.temporal_size:
            feats = F.interpolate(feats, size=self.temporal_size, mode='linear', align_corners=False)
        snippets_per_step = inputs.shape[2] / feats.shape[-1]
        steps = torch.arange(feats.shape[-1], device=feats.device)
        mask = steps[None] * snippets_per_step < valid_len[:, None]
        feats, mask = self._pad(feats, mask)
        feats, masks = self.projection(feats, mask)
        feats, masks = self.neck(feats, masks)
        return feats, masks, snippets_per_step

    def forward(self, inputs: Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor') -> Union[Dict[str, Tensor], List[BaseDataElement], Tuple]:
        """``'loss'``: dict of losses; ``'predict'``: data samples with predictions; ``'tensor'``: head outputs."""
        if data_samples is None:
            data_samples = [BaseDataElement(metainfo=dict(valid_len=inputs.shape[2])) for _ in range(len(inputs))]
        feats, masks, step = self.extract_feat(inputs, self._valid_lens(data_samples, inputs.device))
        if mode == 'tensor':
            return self.rpn_head(feats, masks)
        if mode == 'loss':
            cls_targets, reg_targets = self._targets(self.rpn_head.points(feats), data_samples, step)
            return self.rpn_head.loss_of_targets(feats, masks, cls_targets, reg_targets)
        if mode == 'predict':
            return self._to_seconds(self.rpn_head.predict(feats, masks, **self.test_cfg), data_samples, step)
        raise ValueError(f'TADDetector: unknown mode {mode!r}; use "loss", "predict" or "tensor"')

    @torch.compiler.disable
    def _targets(self, points: Tensor, data_samples: Sequence[BaseDataElement], step: float
                 ) -> Tuple[Tensor, Tensor]:
        """The head's ``(B, P, ...)`` targets of the annotated actions, always computed eagerly.

        The number of actions differs from sample to sample and batch to batch. Traced by ``torch.compile``, the
        sizes of the ground-truth tensors become guards of the compiled loss forward and a new count recompiles it
        (5 compiles for 5 batches of the tiny detector in tests/test_models/test_tad/test_detector.py); dynamo's
        automatic dynamic shapes do not end it, since sizes 0 and 1 stay specialised and each sample's tensors turn
        dynamic one by one. Made here, the counts never reach a compiled graph: the loss forward compiles once, as
        the graph before this call (backbone to neck) and the one after it (head and loss), both of fixed shapes,
        for one graph break and a few eager ops per sample. Padding the actions to a fixed count instead (a
        zero-length action changes no target) would need a bound on the count, or recompile when it grows.
        """
        gt_segments = [sample.gt_segments.float() / step for sample in data_samples]
        return self.rpn_head.targets(points, gt_segments, [sample.gt_labels for sample in data_samples])

    @staticmethod
    def _to_seconds(detections: Sequence[Tuple[Tensor, Tensor, Tensor]], data_samples: Sequence[BaseDataElement],
                    step: float) -> List[BaseDataElement]:
        """Grid units -> video seconds ``(snippet * sample_stride + window_start_frame) / fps``, clipped to
        ``[0, duration]`` (OpenTAD's ``convert_to_seconds``; ``offset_frames`` is added when the sample has it)."""
        outputs = []
        for (segments, scores, labels), sample in zip(detections, data_samples):
            meta = sample.metainfo
            frames = segments * step * meta['sample_stride'] + meta['window_start_frame'] + meta.get('offset_frames', 0)
            out = BaseDataElement(metainfo=dict(meta))
            out.pred_segments = (frames / meta['fps']).clamp(0, meta['duration']).cpu()
            out.pred_scores = scores.cpu()
            out.pred_labels = labels.cpu()
            outputs.append(out)
        return outputs
