"""HaMeR with LoRA: ViT backbone + MANO transformer head (+ discriminator), adversarial training in MMEngine."""
from typing import Any, Dict, List, Mapping, Optional, Union

from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict
from torch import Tensor, nn

from opentad_lora.peft import LoRAReport, apply_lora
from opentad_lora.registry import MODELS
from .checkpoint import load_hamer_checkpoint
from .geometry import cam_to_translation, perspective_projection
from .losses import (keypoint_2d_loss, keypoint_3d_loss, lsgan_discriminator_loss, lsgan_generator_loss,
                     parameter_loss)
from .mano_layer import MANOLayer

#: HaMeR's loss weights (``LOSS_WEIGHTS`` of ``hamer_vit_transformer.yaml``).
HAMER_LOSS_WEIGHTS = dict(keypoints_3d=0.05, keypoints_2d=0.01, global_orient=0.001, hand_pose=0.001, betas=0.0005,
                          adversarial=0.0005)
#: The parts LoRA can be configured on, as attributes of the model.
LORA_PARTS = ('backbone', 'mano_head', 'discriminator')
_IMAGENET = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])


def apply_part_lora(model: nn.Module, lora: Optional[Mapping[str, Any]]) -> Dict[str, LoRAReport]:
    """Add LoRA to each configured part; freeze every part that has no LoRA config.

    ``lora`` holds shared :class:`~opentad_lora.peft.LoRAConfig` fields (``r``, ``alpha``, ``dropout``, ...) and one
    entry per part (``backbone``, ``mano_head``, ``discriminator``) whose fields override the shared ones; a part
    that is absent or None is frozen entirely. ``lora=None`` leaves the whole model trainable (full fine-tuning).
    """
    if lora is None:
        return {}
    lora = dict(lora)
    parts = {name: lora.pop(name, None) for name in LORA_PARTS}
    reports = {}
    for name, part_cfg in parts.items():
        module = getattr(model, name, None)
        if module is None:
            if part_cfg is not None:
                raise ValueError(f'lora.{name} is set but the model has no {name}.')
            continue
        if part_cfg is None:
            module.requires_grad_(False)
            continue
        reports[name] = apply_lora(module, {**lora, **dict(part_cfg)})
    return reports


@MODELS.register_module()
class HaMeRLoRA(BaseModel):
    """HaMeR (Pavlakos et al., CVPR 2024) with LoRA on the backbone, the MANO head and the discriminator.

    A 256x256 hand crop is cut to 256x192 (``crop_width`` columns off each side), encoded by the ViT into 16x12
    tokens, and the MANO head regresses the hand pose (6D -> rotations), betas and a weak-perspective camera. MANO
    gives the mesh and 21 keypoints, which are projected with focal ``focal_length / image_size``.

    Args:
        backbone: Config of the ViT (e.g. ``VisionTransformer`` with ``arch='hamer-huge'``), feature-map output.
        mano_head: Config of :class:`MANOTransformerDecoderHead`.
        mano: Arguments of :class:`MANOLayer` (``model_path`` at least).
        discriminator: Config of :class:`HaMeRDiscriminator`; None trains without the adversarial term.
        lora: Per-part LoRA configs (see :func:`apply_part_lora`).
        pretrained_model_path: Official HaMeR checkpoint (``backbone.*``/``mano_head.*``/``discriminator.*``), loaded
            before LoRA is added.
        loss_weights: Overrides of :data:`HAMER_LOSS_WEIGHTS`.
        focal_length: HaMeR's ``EXTRA.FOCAL_LENGTH`` (5000).
        image_size: Side of the square input crop (256).
        crop_width: Columns cut from each side before the backbone (32 -> 256x192).
        data_preprocessor: Defaults to ImageNet normalisation of BGR uint8 crops (converted to RGB).
    """

    def __init__(self, backbone: dict, mano_head: dict, mano: dict, discriminator: Optional[dict] = None,
                 lora: Optional[dict] = None, pretrained_model_path: Optional[str] = None,
                 loss_weights: Optional[dict] = None, focal_length: float = 5000.0, image_size: int = 256,
                 crop_width: int = 32, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = dict(type='ImgDataPreprocessor', bgr_to_rgb=True, **_IMAGENET)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        unknown = set(loss_weights or {}) - set(HAMER_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f'Unknown loss weights {sorted(unknown)}; known: {sorted(HAMER_LOSS_WEIGHTS)}')
        self.loss_weights = {**HAMER_LOSS_WEIGHTS, **(loss_weights or {})}
        self.focal_length = focal_length
        self.image_size = image_size
        self.crop_width = crop_width
        self.backbone = MODELS.build(backbone)
        self.mano_head = MODELS.build(mano_head)
        self.discriminator = MODELS.build(discriminator) if discriminator is not None else None
        self.mano = MANOLayer(**mano)
        if pretrained_model_path:
            load_hamer_checkpoint(self, pretrained_model_path)
        self.lora_reports = apply_part_lora(self, lora)

    # -- forward ---------------------------------------------------------------------------------------------------
    def predict_hands(self, inputs: Tensor) -> Dict[str, Tensor]:
        """Normalised crops ``(B, 3, S, S)`` -> MANO parameters, camera, mesh and 2D/3D keypoints."""
        if self.crop_width:
            inputs = inputs[..., self.crop_width:-self.crop_width]
        params = self.mano_head(self.backbone(inputs))
        batch = inputs.shape[0]
        cam_t = cam_to_translation(params['pred_cam'], self.focal_length, self.image_size)
        mano_out = self.mano(params['global_orient'], params['hand_pose'], params['betas'])
        focal = params['pred_cam'].new_full((batch, 2), self.focal_length / self.image_size)
        keypoints_2d = perspective_projection(mano_out['joints'], cam_t, focal)
        return dict(params, pred_cam_t=cam_t, vertices=mano_out['vertices'], keypoints_3d=mano_out['joints'],
                    keypoints_2d=keypoints_2d)

    def forward(self, inputs: Tensor, data_samples: Optional[Dict[str, Any]] = None,
                mode: str = 'tensor') -> Union[Dict[str, Tensor], List[Dict[str, Any]]]:
        """``'tensor'``: :meth:`predict_hands`; ``'loss'``: generator losses; ``'predict'``: one dict per sample."""
        output = self.predict_hands(inputs)
        if mode == 'tensor':
            return output
        if mode == 'loss':
            return self.generator_losses(output, data_samples)
        if mode == 'predict':
            return self.to_predictions(output, data_samples)
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    # -- losses ----------------------------------------------------------------------------------------------------
    def generator_losses(self, output: Dict[str, Tensor], targets: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """HaMeR's weighted generator losses; the adversarial term only with a discriminator and a weight > 0."""
        w = self.loss_weights
        batch = output['betas'].shape[0]
        losses = dict(
            loss_keypoints_3d=w['keypoints_3d'] * keypoint_3d_loss(output['keypoints_3d'], targets['keypoints_3d']),
            loss_keypoints_2d=w['keypoints_2d'] * keypoint_2d_loss(output['keypoints_2d'], targets['keypoints_2d']))
        for name in ('global_orient', 'hand_pose', 'betas'):
            pred, gt = output[name].reshape(batch, -1), targets[name].reshape(batch, -1).to(output[name].dtype)
            losses[f'loss_{name}'] = w[name] * parameter_loss(pred, gt, targets[f'has_{name}'])
        if self.discriminator is not None and w['adversarial'] > 0:
            scores = self.discriminator(output['hand_pose'], output['betas'])
            losses['loss_adv'] = w['adversarial'] * lsgan_generator_loss(scores)
        return losses

    def discriminator_loss(self, output: Dict[str, Tensor], targets: Dict[str, Tensor]) -> Tensor:
        """Weighted LSGAN loss: predictions (detached) are fake, the real MANO samples of the batch are real."""
        fake = self.discriminator(output['hand_pose'].detach(), output['betas'].detach())
        real = self.discriminator(targets['mocap_hand_pose'], targets['mocap_betas'])
        return self.loss_weights['adversarial'] * lsgan_discriminator_loss(fake, real)

    def train_step(self, data: Union[dict, tuple, list],
                   optim_wrapper: Union[OptimWrapperDict, Any]) -> Dict[str, Tensor]:
        """One generator update, then one discriminator update (HaMeR's manual optimisation).

        With an :class:`OptimWrapperDict`, ``'generator'`` steps the backbone/head LoRA and ``'discriminator'`` the
        discriminator LoRA; a plain optim wrapper (no adversarial training) runs the generator step only.
        """
        adversarial = self.discriminator is not None and self.loss_weights['adversarial'] > 0
        if isinstance(optim_wrapper, OptimWrapperDict):
            gen_wrapper = optim_wrapper['generator']
            disc_wrapper = optim_wrapper['discriminator'] if adversarial else None
        elif adversarial:
            raise TypeError('Adversarial HaMeR training needs optim_wrapper=OptimWrapperDict(generator=..., '
                            'discriminator=...); set discriminator=None or loss_weights.adversarial=0 otherwise.')
        else:
            gen_wrapper, disc_wrapper = optim_wrapper, None
        data = self.data_preprocessor(data, True)
        inputs, targets = data['inputs'], data['data_samples']
        with gen_wrapper.optim_context(self):
            output = self.predict_hands(inputs)
            loss, log_vars = self.parse_losses(self.generator_losses(output, targets))
        gen_wrapper.update_params(loss)
        if disc_wrapper is not None:
            with disc_wrapper.optim_context(self.discriminator):
                loss_disc = self.discriminator_loss(output, targets)
            disc_wrapper.zero_grad()  # drop the gradients the generator's adversarial term left on D
            disc_wrapper.update_params(loss_disc)
            log_vars['loss_disc'] = loss_disc.detach()
        return log_vars

    # -- predictions -----------------------------------------------------------------------------------------------
    @staticmethod
    def to_predictions(output: Dict[str, Tensor], targets: Optional[Dict[str, Tensor]]) -> List[Dict[str, Any]]:
        """Split a batch into per-sample dicts (CPU tensors) with the ground truth the metric needs."""
        names = dict(vertices='pred_vertices', keypoints_3d='pred_keypoints_3d', keypoints_2d='pred_keypoints_2d',
                     pred_cam='pred_cam', pred_cam_t='pred_cam_t', betas='pred_betas')
        preds = [{name: output[key][i].detach().cpu() for key, name in names.items()}
                 for i in range(output['vertices'].shape[0])]
        if targets is not None:
            for key in ('keypoints_3d', 'vertices', 'has_vertices', 'sample_idx'):
                if key in targets:
                    for i, pred in enumerate(preds):
                        value = targets[key][i]
                        pred[f'gt_{key}'] = value.detach().cpu() if isinstance(value, Tensor) else value
        return preds

