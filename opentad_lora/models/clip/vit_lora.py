"""``ViTLoRA``: CLIP (vision + text transformers) with LoRA configured per encoder."""
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opentad_lora.peft import LoRAReport, apply_lora
from opentad_lora.registry import MODELS
from . import api
from .arch import resolve_arch
from .convert import convert_clip_state_dict, read_clip_checkpoint
from .lora_config import TOWERS, tower_lora_configs
from .towers import CLIPTextTransformer, CLIPVisionTransformer


@MODELS.register_module()
class ViTLoRA(nn.Module):
    """CLIP with HF ``CLIPModel`` module names, built from an architecture preset, LoRA per encoder.

    Construction order: build -> load ``pretrained`` (OpenAI or HF layout) -> :func:`opentad_lora.peft.apply_lora`
    on ``vision_model`` and/or ``text_model`` -> freeze everything that is not LoRA. A tower without LoRA targets
    stays frozen, as do the projections and ``logit_scale`` (CLIP-LoRA trains the LoRA matrices only). With LoRA
    disabled every parameter is trainable (full fine-tuning).

    Args:
        arch: ``'ViT-B/32'``, ``'ViT-B/16'``, ``'ViT-L/14'``, ``'tiny'``, an HF hub id of those, or a dict
            (see :func:`~opentad_lora.models.clip.arch.resolve_arch`).
        pretrained: Path of an OpenAI (``visual.conv1.weight``...) or HF (``vision_model...``) checkpoint.
        checkpoint_layout: ``'auto'``, ``'openai'`` or ``'hf'``.
        lora: Per-encoder LoRA dict (see :mod:`~opentad_lora.models.clip.lora_config`); ``lora.seed`` makes the
            LoRA initialisation independent of the global RNG (FFA-LoRA's shared A).
        with_cp: Activation checkpointing of every encoder layer.
    """

    def __init__(self, arch: Union[str, Mapping[str, Any]] = 'ViT-B/16', pretrained: Optional[str] = None,
                 checkpoint_layout: str = 'auto', lora: Optional[Mapping[str, Any]] = None,
                 with_cp: bool = False) -> None:
        super().__init__()
        self.arch = resolve_arch(arch)
        vision, text = self.arch['vision'], self.arch['text']
        self.vision_model = CLIPVisionTransformer(with_cp=with_cp, **vision)
        self.text_model = CLIPTextTransformer(with_cp=with_cp, **text)
        self.visual_projection = nn.Linear(vision['width'], self.arch['embed_dim'], bias=False)
        self.text_projection = nn.Linear(text['width'], self.arch['embed_dim'], bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if pretrained:  # every tensor comes from the file (checked), so no random init first
            self.load_pretrained(pretrained, checkpoint_layout)
        else:
            self._init_random_weights()
        self.lora_reports: Dict[str, LoRAReport] = {}
        self._apply_lora(lora)

    @property
    def context_length(self) -> int:
        return self.arch['text']['context_length']

    @property
    def image_size(self) -> int:
        return self.arch['vision']['image_size']

    def _init_random_weights(self) -> None:
        """CLIP-style random init when no checkpoint is given (not named ``init_weights``: MMEngine's Runner calls
        that at the start of training, which would overwrite the pretrained base)."""
        for name, param in self.named_parameters():
            if name == 'logit_scale':
                continue
            if name.endswith('bias'):
                nn.init.zeros_(param)
            elif 'norm' in name:
                nn.init.ones_(param)
            else:
                nn.init.normal_(param, std=0.02 if param.ndim > 1 else param.shape[0] ** -0.5)

    def load_pretrained(self, path: Union[str, Path], layout: str = 'auto') -> None:
        """Load an OpenAI or HF CLIP checkpoint; every model tensor must be present with the same shape.

        Raises:
            ValueError: naming the file and the missing/unexpected/mis-shaped keys.
        """
        state = convert_clip_state_dict(read_clip_checkpoint(path), layout)
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f'CLIP checkpoint {path} does not fit arch {self.arch}: missing {missing[:8]}, '
                             f'unexpected {unexpected[:8]}, shape mismatches {shapes[:8]}.')
        self.load_state_dict(state)

    def _apply_lora(self, lora: Optional[Mapping[str, Any]]) -> None:
        configs = tower_lora_configs(lora)
        if not configs:
            return
        seed = lora.get('seed')
        with torch.random.fork_rng(devices=[], enabled=seed is not None):  # a seeded init leaves the global RNG
            if seed is not None:
                torch.manual_seed(int(seed))
            for tower, cfg in configs.items():
                self.lora_reports[tower] = apply_lora(getattr(self, TOWERS[tower]), cfg)
        for name, param in self.named_parameters():  # projections, logit_scale and a tower without LoRA
            if '.lora_A.' not in name and '.lora_B.' not in name and not self._saved(name):
                param.requires_grad_(False)

    def _saved(self, param_name: str) -> bool:
        """Whether a parameter belongs to a tower's ``modules_to_save`` (left trainable by apply_lora)."""
        return any(param_name.startswith(f'{TOWERS[t]}.{m}.') for t, r in self.lora_reports.items()
                   for m in r.modules_to_save)

    def encode_image(self, pixel_values: Tensor, normalize: bool = False) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, embed_dim) image embeddings."""
        feats = self.visual_projection(self.vision_model(pixel_values))
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, input_ids: Tensor, normalize: bool = False) -> Tensor:
        """(B, L) token ids (each row with an end-of-text token) -> (B, embed_dim) text embeddings."""
        feats = self.text_projection(self.text_model(input_ids))
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, pixel_values: Tensor, input_ids: Tensor) -> Dict[str, Tensor]:
        """CLIP's contrastive logits: ``logits_per_image`` = exp(logit_scale) * cos(image_i, text_j)."""
        image = self.encode_image(pixel_values, normalize=True)
        text = self.encode_text(input_ids, normalize=True)
        logits = self.logit_scale.exp() * image @ text.t()
        return dict(image_embeds=image, text_embeds=text, logits_per_image=logits, logits_per_text=logits.t())

    # The seed's methods (``model.get_parameters()``...), delegating to the package functions.
    def is_lora_enabled(self) -> bool:
        return api.is_lora_enabled(self)

    def get_lora_info(self) -> Dict[str, Any]:
        return api.get_lora_info(self)

    def get_model_summary(self) -> Dict[str, Any]:
        return api.get_model_summary(self)

    def get_parameters(self) -> List[np.ndarray]:
        return api.get_parameters(self)

    def get_parameters_dict(self) -> Dict[str, np.ndarray]:
        return api.get_parameters_dict(self)

    def set_parameters(self, params: Sequence[np.ndarray]) -> None:
        api.set_parameters(self, params)
