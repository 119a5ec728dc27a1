"""``CLIPClassifier``: zero-/few-shot image classification by prompt similarity, trained with cross-entropy."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from torch import Tensor, nn

from opentad_lora.registry import MODELS
from ..classification.outputs import classification_outputs
from .tokenizer import CLIPTokenizer

# OpenAI CLIP's normalisation (RGB), on the 0-255 scale of uint8 inputs.
CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)


@MODELS.register_module()
class CLIPClassifier(BaseModel):
    """Logits ``scale * cos(image, class_c)``, ``class_c`` the mean normalised text embedding of the class name
    written into every template (prompt ensembling; one template = CLIP-LoRA's setting).

    Zero-shot: build and evaluate. Few-shot: train LoRA of either tower with cross-entropy. When the text tower is
    adapted, class embeddings are recomputed at every training step (as CLIP-LoRA does); in eval mode without
    grad they are cached until a text-side weight changes (tracked by tensor version counters, so
    ``set_parameters``/``load_state_dict`` invalidate the cache).

    Args:
        clip: ``ViTLoRA`` config (or module).
        class_names: Names written into the templates, in label order.
        templates: Prompt templates with one ``{}``.
        tokenizer: Kwargs of :class:`CLIPTokenizer` (``bpe_path``...); the context length is the model's.
        logit_scale: Fixed scale (CLIP-LoRA uses 100); None = ``exp(clip.logit_scale)`` clamped to 100.
        label_smoothing: Cross-entropy label smoothing.
        data_preprocessor: Default ``ImgDataPreprocessor`` with CLIP's mean/std on RGB uint8 inputs.
    """

    def __init__(self, clip: Union[dict, nn.Module], class_names: Sequence[str],
                 templates: Sequence[str] = ('a photo of a {}.', ), tokenizer: Optional[dict] = None,
                 logit_scale: Optional[float] = None, label_smoothing: float = 0.0,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = dict(type='ImgDataPreprocessor', mean=CLIP_MEAN, std=CLIP_STD)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.clip = MODELS.build(clip) if isinstance(clip, dict) else clip
        if not class_names or not templates:
            raise ValueError('CLIPClassifier needs at least one class name and one template.')
        bad = [t for t in templates if t.count('{}') != 1]
        if bad:
            raise ValueError(f'Every template needs exactly one "{{}}" for the class name; bad: {bad}.')
        self.class_names, self.templates = list(class_names), list(templates)
        tok = CLIPTokenizer(**{'context_length': self.clip.context_length, **(tokenizer or {})})
        eot = self.clip.text_model.eot_token_id
        if tok.eot_token_id != eot or tok.vocab_size > self.clip.text_model.embeddings.token_embedding.num_embeddings:
            raise ValueError(f'Tokenizer vocabulary ({tok.vocab_size} ids, end-of-text {tok.eot_token_id}) does not '
                             f'fit the text tower (end-of-text {eot}); set the arch text vocab_size to '
                             f'{tok.vocab_size}.')
        prompts = [template.format(name) for name in self.class_names for template in self.templates]
        self.register_buffer('prompt_ids', tok(prompts), persistent=False)
        self.fixed_logit_scale = logit_scale
        self.label_smoothing = label_smoothing
        self._text_cache: Optional[Tuple[tuple, Tensor]] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _text_version(self) -> tuple:
        params = [*self.clip.text_model.parameters(), *self.clip.text_projection.parameters()]
        return tuple((id(p), p._version, p.device, p.dtype) for p in params)

    def class_embeddings(self) -> Tensor:
        """(num_classes, embed_dim) unit-norm class embeddings (template mean, renormalised)."""
        cacheable = not self.training and not torch.is_grad_enabled()
        if cacheable and self._text_cache is not None and self._text_cache[0] == self._text_version():
            return self._text_cache[1]
        feats = self.clip.encode_text(self.prompt_ids, normalize=True)
        feats = F.normalize(feats.reshape(self.num_classes, len(self.templates), -1).mean(dim=1), dim=-1)
        self._text_cache = (self._text_version(), feats) if cacheable else None
        return feats

    def logit_scale(self) -> Tensor:
        if self.fixed_logit_scale is not None:
            return torch.tensor(float(self.fixed_logit_scale))
        return self.clip.logit_scale.exp().clamp(max=100.0)

    def forward(self, inputs: Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor') -> Union[Tensor, Dict[str, Tensor], List[BaseDataElement]]:
        """``'tensor'``: logits (B, C); ``'loss'``: ``dict(loss=CE)``; ``'predict'``: samples with ``pred_score``
        (softmax) and ``pred_label``."""
        image = self.clip.encode_image(inputs, normalize=True)
        logits = self.logit_scale().to(image) * image @ self.class_embeddings().to(image).t()
        return classification_outputs(logits, data_samples, mode, self.label_smoothing)
