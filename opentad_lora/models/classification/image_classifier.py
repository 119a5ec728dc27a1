"""Backbone + linear head image classifier, optionally with LoRA on the backbone."""
from typing import Dict, List, Optional, Union

from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from torch import Tensor, nn

from opentad_lora.peft import LoRAConfig, apply_lora
from opentad_lora.registry import MODELS
from .outputs import classification_outputs

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@MODELS.register_module()
class ImageClassifier(BaseModel):
    """``head(backbone(images))`` trained with cross-entropy.

    The backbone must return (B, C) features (e.g. ``VisionTransformer(out_type='cls')``). The head is one linear
    layer named ``head`` (timm's name). With ``lora`` set, :func:`opentad_lora.peft.apply_lora` wraps the targeted
    layers of the whole classifier after it is built (so the backbone's pretrained weights are already loaded) and
    freezes everything else except ``lora['modules_to_save']`` (put ``'head'`` there to train the head in full).

    Args:
        backbone: Backbone config.
        num_classes: Number of classes.
        in_channels: Feature width of the backbone (default: ``backbone.embed_dim``).
        lora: A :class:`~opentad_lora.peft.LoRAConfig` or its dict; None = full fine-tuning.
        label_smoothing: Cross-entropy label smoothing.
        data_preprocessor: Batch preprocessing; default ``ImgDataPreprocessor`` with ImageNet mean/std (RGB,
            uint8 inputs).
        init_cfg: MMEngine init config.
    """

    def __init__(self, backbone: dict, num_classes: int, in_channels: Optional[int] = None,
                 lora: Union[None, dict, LoRAConfig] = None, label_smoothing: float = 0.0,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = dict(type='ImgDataPreprocessor', mean=IMAGENET_MEAN, std=IMAGENET_STD)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        in_channels = in_channels or getattr(self.backbone, 'embed_dim', None)
        if not in_channels:
            raise ValueError('in_channels is required when the backbone has no embed_dim attribute.')
        self.head = nn.Linear(in_channels, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.lora_report = apply_lora(self, lora) if lora is not None else None

    def forward(self, inputs: Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor') -> Union[Tensor, Dict[str, Tensor], List[BaseDataElement]]:
        """``'tensor'``: logits (B, num_classes); ``'loss'``: ``dict(loss=...)``; ``'predict'``: data samples
        with ``pred_score`` (softmax), ``pred_label`` (and the input ``gt_label`` kept)."""
        return classification_outputs(self.head(self.backbone(inputs)), data_samples, mode, self.label_smoothing)
