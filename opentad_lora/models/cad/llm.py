"""The decoder-only LLM of CAD-Recode through ``transformers``: build it from a config or load it from a local HF
folder, read the point encoder stored next to it, and write the HF layout back (CAD-Recode's checkpoint layout:
the LLM's keys plus ``point_encoder.*`` in ``model.safetensors``).
"""
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .tokenization import require_transformers
from opentad_lora.peft.config import resolve_dtype

POINT_ENCODER_PREFIX = 'point_encoder.'


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (point-encoder keys are expected extras)."""
    logging = require_transformers().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def build_causal_lm(pretrained: Optional[str] = None, config: Optional[Mapping[str, Any]] = None,
                    dtype: Union[str, torch.dtype] = 'auto', seed: int = 0, vocab_size: Optional[int] = None,
                    attn_implementation: str = 'sdpa') -> nn.Module:
    """A ``*ForCausalLM`` either loaded from a local HF folder or built from a config with seeded weights.

    Args:
        pretrained: Local folder in the HF layout (``config.json`` + ``*.safetensors``): Qwen2/Qwen3 base weights,
            a CAD-Recode checkpoint or a ``merged_model/`` written by this package. Nothing is downloaded.
        config: Config fields with ``model_type`` (``'qwen2'``, ``'qwen3'``, ...) when there is no ``pretrained``.
            The weights are drawn under ``torch.manual_seed(seed)`` without touching the global RNG, so the same
            frozen base is rebuilt for training, testing and resuming (checkpoints keep only trainable tensors).
        dtype: dtype of the LLM weights; ``'auto'``: the checkpoint's (``config.json``'s ``dtype``/``torch_dtype``,
            bfloat16 for the released CAD-Recode and Qwen weights), float32 for a ``config``-built model. The point
            encoder and LoRA choose their own.
        seed: Seed of the random init (``config`` only).
        vocab_size: Vocabulary size when ``config`` lacks one (the tokenizer's length).
        attn_implementation: ``'sdpa'`` or ``'eager'`` (or ``'flash_attention_2'`` where installed).
    """
    transformers = require_transformers()
    auto = dtype == 'auto'
    torch_dtype = None if auto else resolve_dtype(dtype)
    if (pretrained is None) == (config is None):
        raise ValueError('Give the LLM either pretrained=<local HF folder> or config=dict(model_type=...), not both.')
    with quiet_transformers():
        if pretrained is not None:
            if not (Path(pretrained) / 'config.json').is_file():
                raise FileNotFoundError(f'LLM folder {pretrained} has no config.json (expected the HF layout; '
                                        'weights are never downloaded).')
            return transformers.AutoModelForCausalLM.from_pretrained(
                str(pretrained), dtype='auto' if auto else torch_dtype, attn_implementation=attn_implementation)
        fields = dict(config)
        if 'model_type' not in fields:
            raise ValueError(f'LLM config needs a model_type (e.g. "qwen2"), got keys {sorted(fields)}.')
        if vocab_size is not None:
            fields.setdefault('vocab_size', vocab_size)
        hf_config = transformers.AutoConfig.for_model(fields.pop('model_type'), **fields)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn_implementation)
        return model.to(torch.float32 if auto else torch_dtype)


def _safetensors_files(folder: Path) -> list:
    index = folder / 'model.safetensors.index.json'
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())['weight_map'].values()})
    return [folder / 'model.safetensors'] if (folder / 'model.safetensors').is_file() else []


def read_point_encoder_state(folder: Union[str, Path]) -> Dict[str, Tensor]:
    """The ``point_encoder.*`` tensors of an HF folder (prefix removed); empty for a plain LLM checkpoint."""
    from safetensors import safe_open

    state = {}
    for file in _safetensors_files(Path(folder)):
        with safe_open(str(file), framework='pt') as handle:
            for key in handle.keys():
                if key.startswith(POINT_ENCODER_PREFIX):
                    state[key[len(POINT_ENCODER_PREFIX):]] = handle.get_tensor(key)
    return state


def save_hf_folder(llm: nn.Module, point_encoder: nn.Module, out_dir: Union[str, Path],
                   dtype: Union[None, str, torch.dtype] = None, state: Optional[Dict[str, Tensor]] = None) -> Path:
    """Write ``llm`` (``save_pretrained``) with ``point_encoder.*`` added to its safetensors, CAD-Recode's layout.

    ``state`` replaces ``llm.state_dict()`` (e.g. merged weights); ``dtype`` casts its floating tensors (e.g. back
    to bfloat16 after a merge); the point encoder stays float32. The folder loads back with
    ``build_causal_lm(pretrained=out_dir)`` + ``read_point_encoder_state``.
    """
    torch_dtype = resolve_dtype(dtype)
    state = {k: (v.to(torch_dtype) if torch_dtype is not None and v.is_floating_point() else v)
             for k, v in (llm.state_dict() if state is None else state).items()}
    state.update({POINT_ENCODER_PREFIX + k: v.float() for k, v in point_encoder.state_dict().items()})
    out_dir = Path(out_dir)
    with quiet_transformers():
        llm.save_pretrained(str(out_dir), state_dict=state)
    if torch_dtype is not None:
        config = json.loads((out_dir / 'config.json').read_text())
        config['dtype'] = str(torch_dtype).replace('torch.', '')
        (out_dir / 'config.json').write_text(json.dumps(config, indent=2))
    return out_dir
