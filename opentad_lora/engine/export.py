"""Adapter and merged-model exports of a (possibly wrapped) LoRA model, shared by the checkpoint hook and the tools."""
import copy
import os
from pathlib import Path
from typing import Dict, Union

from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from opentad_lora.peft import merge_and_unload, save_adapter
from .checkpoint import atomic_torch_save

MERGED_FILENAME = 'model.pth'


def adapter_root(model: nn.Module) -> nn.Module:
    """The module adapter files are written relative to.

    DDP/FSDP wrappers are unwrapped; a model exposing an ``adapter_root`` module (``LoRAModel`` exposes the model it
    wraps) is replaced by it, so adapter keys match the plain model, as PEFT expects.
    """
    if is_model_wrapper(model):
        model = model.module
    root = getattr(model, 'adapter_root', None)
    return root if isinstance(root, nn.Module) else model


def save_adapter_folder(model: nn.Module, out_dir: Union[str, Path], adapter_name: str = 'default') -> Path:
    """Write PEFT's ``adapter_model.safetensors`` + ``adapter_config.json`` for every LoRA layer of ``model``.

    A model that defines its own ``save_adapter(out_dir, adapter_name)`` (PEFT files plus what it needs to be
    used on its own, e.g. CAD-Recode's tokenizer and base description) writes the folder itself.
    """
    root = adapter_root(model)
    if callable(getattr(root, 'save_adapter', None)):
        return Path(root.save_adapter(out_dir, adapter_name))
    return save_adapter(root, out_dir, adapter_name)


def merged_state_dict(model: nn.Module) -> Dict[str, Tensor]:
    """The plain state dict of ``model`` with its active adapters merged, computed on a deep copy.

    The copy goes through ``merge_and_unload`` (quantized bases come out as float ``nn.Linear``), so the training
    weights are untouched; it costs one extra copy of the model in memory for the duration of the call.
    """
    merged = merge_and_unload(copy.deepcopy(adapter_root(model)))
    return {key: value.detach().cpu() for key, value in merged.state_dict().items()}


def save_merged_model(model: nn.Module, out_dir: Union[str, Path], filename: str = MERGED_FILENAME) -> Path:
    """Atomically write :func:`merged_state_dict` to ``out_dir/filename``; returns the file path."""
    path = Path(out_dir) / filename
    os.makedirs(path.parent, exist_ok=True)
    atomic_torch_save(merged_state_dict(model), path)
    return path
