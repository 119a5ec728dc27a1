"""CLIP (vision + text transformers) with per-encoder LoRA, OpenAI/HF checkpoint loaders, BPE tokenizer and a
zero-/few-shot classifier."""
from .api import (create_clip_model, get_lora_info, get_model_summary, get_parameters, get_parameters_dict,
                  is_lora_enabled, set_parameters)
from .arch import CLIP_ARCHS, resolve_arch
from .classifier import CLIP_MEAN, CLIP_STD, CLIPClassifier
from .convert import convert_clip_state_dict, detect_layout, openai_to_ours, ours_to_openai, read_clip_checkpoint
from .tokenizer import CLIPTokenizer, find_bpe_vocab
from .vit_lora import ViTLoRA

__all__ = [
    'ViTLoRA', 'CLIPClassifier', 'CLIPTokenizer', 'find_bpe_vocab', 'CLIP_ARCHS', 'resolve_arch', 'CLIP_MEAN',
    'CLIP_STD', 'create_clip_model', 'is_lora_enabled', 'get_lora_info', 'get_model_summary', 'get_parameters',
    'get_parameters_dict', 'set_parameters', 'convert_clip_state_dict', 'detect_layout', 'openai_to_ours',
    'ours_to_openai', 'read_clip_checkpoint',
]
