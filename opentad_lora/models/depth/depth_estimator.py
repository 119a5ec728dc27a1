"""``DepthEstimator``: VGGT-style multi-view depth (+ camera) model with LoRA placed by config."""
import copy
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from torch import Tensor

from opentad_lora.peft import apply_lora
from opentad_lora.registry import MODELS
from .pose import encode_pose, normalize_to_first_frame
from .vggt_checkpoint import convert_vggt_state_dict

Samples = Optional[List[Any]]  # dicts or mmengine BaseDataElements (anything with ``get`` and ``in``)


def load_weights_file(path: str) -> Dict[str, Any]:
    """Load a ``.safetensors`` file or a torch checkpoint with the package's safe (``weights_only``) loader."""
    if str(path).endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    from opentad_lora.engine.checkpoint import load_checkpoint_file
    return load_checkpoint_file(path)


@MODELS.register_module()
class DepthEstimator(BaseModel):
    """VGGT aggregator + DPT depth head (+ optional camera head), trained with VGGT's losses.

    Construction order matters for LoRA checkpoints: the sub-modules are built, the ``pretrained`` file is loaded
    (official VGGT layout or ours; see :mod:`.vggt_checkpoint`), and only then ``lora`` is applied through
    :func:`opentad_lora.peft.apply_lora` on the whole model, so targets use full names such as
    ``'depth_head.projects.0-3'`` or ``'aggregator.global_blocks.12-23.*.qkv'``. Without ``lora`` every parameter
    trains (full fine-tuning).

    Inputs are ``(B, S, 3, H, W)`` images in [0, 1] (or a list of (S, 3, H, W)); data samples are dicts with
    ``depth``, ``valid_mask`` (S, H, W), ``extrinsics`` (S, 3, 4), ``intrinsics`` (S, 3, 3), ``scene`` and
    ``frame_names`` (dicts or data elements, see ``COLMAPMultiViewDataset``).

    Args:
        aggregator: Config of the backbone (``VGGTAggregator``).
        depth_head: Config of the depth head (``DPTHeadLoRA``); ``dim_in`` and ``patch_size`` default to the
            aggregator's.
        camera_head: Config of the camera head (``CameraHead``) or None for depth only.
        loss: Config of the loss (``VGGTDepthCameraLoss``).
        lora: LoRA config (a :class:`~opentad_lora.peft.LoRAConfig` dict) or None.
        pretrained: Weights file loaded before LoRA is applied (all parameters must be covered).
        normalize_gt: Express targets in frame-0 coordinates at unit scene scale (VGGT's normalisation).
        data_preprocessor: MMEngine data preprocessor config.
        init_cfg: MMEngine init config.
    """

    def __init__(self, aggregator: dict, depth_head: dict, camera_head: Optional[dict] = None,
                 loss: dict = dict(type='VGGTDepthCameraLoss'), lora: Optional[dict] = None,
                 pretrained: Optional[str] = None, normalize_gt: bool = True,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.aggregator = MODELS.build(aggregator)
        head_defaults = dict(dim_in=self.aggregator.out_dim)
        self.depth_head = MODELS.build({**head_defaults, 'patch_size': self.aggregator.patch_size, **depth_head})
        self.camera_head = MODELS.build({**head_defaults, **camera_head}) if camera_head else None
        self.criterion = MODELS.build(loss)
        self.normalize_gt = normalize_gt
        if pretrained:
            self.load_pretrained(pretrained)
        self.lora_report = apply_lora(self, copy.deepcopy(lora)) if lora else None
        if self.lora_report is not None:
            MMLogger.get_current_instance().info(str(self.lora_report))

    def load_pretrained(self, path: str) -> None:
        """Load ``path`` (VGGT or our layout) into the model; every parameter and persistent buffer must be there."""
        keep = ['aggregator', 'depth_head'] + (['camera_head'] if self.camera_head is not None else [])
        try:
            state, dropped = convert_vggt_state_dict(load_weights_file(path), keep)
        except ValueError as err:
            raise ValueError(f'{path}: {err}') from None
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        resized = [f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}' for k, v in state.items()
                   if k in own and v.shape != own[k].shape]
        if missing or unexpected or resized:
            raise ValueError(f'{path} does not fit this DepthEstimator: {len(missing)} missing keys {missing[:5]}, '
                             f'{len(unexpected)} unexpected keys {unexpected[:5]}, {len(resized)} shape mismatches '
                             f'{resized[:5]}.')
        self.load_state_dict(state)
        if dropped:
            heads = sorted({k.split('.', 1)[0] for k in dropped})
            MMLogger.get_current_instance().info(f'{path}: ignored {len(dropped)} tensors of {heads}.')

    # -- forward ------------------------------------------------------------------------------------------------
    def predict_raw(self, images: Tensor, with_camera: bool = True) -> Dict[str, Any]:
        """``depth`` and ``depth_conf`` (B, S, H, W) and, with a camera head, ``pose_enc_list`` [(B, S, 9)...]."""
        needed: Sequence[int] = list(self.depth_head.intermediate_layer_idx)
        with_camera = with_camera and self.camera_head is not None
        if with_camera:
            needed = [*needed, -1]
        tokens, patch_start_idx = self.aggregator(images, out_indices=needed)
        depth, conf = self.depth_head(tokens, tuple(images.shape[-2:]), patch_start_idx)
        out = dict(depth=depth[..., 0], depth_conf=conf)
        if with_camera:
            out['pose_enc_list'] = self.camera_head(tokens)
        return out

    def forward(self, inputs: Union[Tensor, List[Tensor]], data_samples: Samples = None,
                mode: str = 'tensor') -> Union[Dict[str, Any], List[Dict[str, Any]]]:
        images = inputs if isinstance(inputs, Tensor) else torch.stack(list(inputs))
        if mode == 'tensor':
            return self.predict_raw(images)
        if mode == 'loss':
            return self.loss(images, data_samples)
        if mode == 'predict':
            return self.predict(images, data_samples)
        raise ValueError(f"Invalid mode {mode!r}; use 'tensor', 'loss' or 'predict'.")

    @staticmethod
    def _batch(data_samples: List[Any], key: str) -> Tensor:
        if not data_samples or key not in data_samples[0]:
            raise KeyError(f'Data samples need {key!r} for training; got keys '
                           f'{sorted(data_samples[0]) if data_samples else []}.')
        return torch.stack([torch.as_tensor(sample.get(key)) for sample in data_samples])

    def loss(self, images: Tensor, data_samples: List[Any]) -> Dict[str, Tensor]:
        """VGGT's losses against the (normalised) ground truth of ``data_samples``."""
        return self.loss_of(self.predict_raw(images), images, data_samples)

    def loss_of(self, preds: Dict[str, Any], images: Tensor, data_samples: List[Any]) -> Dict[str, Tensor]:
        """The losses of :meth:`predict_raw` outputs ``preds`` against ``data_samples``."""
        gt_depth = self._batch(data_samples, 'depth').to(images)
        valid = self._batch(data_samples, 'valid_mask').to(images.device).bool()
        gt_pose = None
        if 'pose_enc_list' in preds or self.normalize_gt:
            extrinsics = self._batch(data_samples, 'extrinsics').to(images)
            intrinsics = self._batch(data_samples, 'intrinsics').to(images)
            if self.normalize_gt:
                extrinsics, gt_depth, _ = normalize_to_first_frame(extrinsics, intrinsics, gt_depth, valid)
            gt_pose = encode_pose(extrinsics, intrinsics, tuple(images.shape[-2:]))
        return self.criterion(preds['depth'], preds['depth_conf'], gt_depth, valid, preds.get('pose_enc_list'),
                              gt_pose)

    def predict(self, images: Tensor, data_samples: Samples = None) -> List[Dict[str, Any]]:
        """One dict per sequence: ``pred_depth``, ``pred_conf`` (S, H, W), ``pose_enc`` (S, 9) with a camera head,
        and the sample's ``depth``/``valid_mask`` as ``gt_depth``/``valid_mask``, ``scene`` and ``frame_names``.

        When the samples carry what training needs (depth, mask and, for the camera or the normalisation, the
        cameras), each dict also gets ``val_loss``: the summed training loss of the batch (the seed's validation
        loss; ``DepthMetric`` averages it over the samples)."""
        preds = self.predict_raw(images)
        val_loss = None
        needed = ['depth', 'valid_mask']
        if 'pose_enc_list' in preds or self.normalize_gt:
            needed += ['extrinsics', 'intrinsics']
        if data_samples and all(key in sample for sample in data_samples for key in needed):
            losses = self.loss_of(preds, images, data_samples)
            val_loss = float(sum(value for key, value in losses.items() if 'loss' in key))
        results = []
        for index in range(images.shape[0]):
            result = dict(pred_depth=preds['depth'][index].detach().cpu(),
                          pred_conf=preds['depth_conf'][index].detach().cpu())
            if 'pose_enc_list' in preds:
                result['pose_enc'] = preds['pose_enc_list'][-1][index].detach().cpu()
            if val_loss is not None:
                result['val_loss'] = val_loss
            if data_samples is not None:
                sample = data_samples[index]
                result.update(gt_depth=torch.as_tensor(sample.get('depth')).cpu(),
                              valid_mask=torch.as_tensor(sample.get('valid_mask')).cpu(),
                              scene=sample.get('scene', ''), frame_names=list(sample.get('frame_names', [])))
            results.append(result)
        return results
