"""The tensors a federated client exchanges: the trainable LoRA tensors, in module order, as numpy arrays.

This is Flower's ``NumPyClient`` convention (an ordered ``List[np.ndarray]``); both ends build the same model from
the same config, so the order (``model.named_parameters()``) is the contract, and shapes are checked on arrival.
"""
from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

LORA_MARKERS = ('.lora_A.', '.lora_B.')


def is_lora_param(name: str) -> bool:
    """Whether a parameter name is a LoRA A/B matrix (PEFT naming: ``x.lora_A.<adapter>.weight``)."""
    return any(marker in name for marker in LORA_MARKERS)


def get_parameter_names(model: nn.Module) -> List[str]:
    """Names of the trainable LoRA tensors of ``model``, in the order :func:`get_parameters` returns them."""
    return [name for name, p in model.named_parameters() if p.requires_grad and is_lora_param(name)]


def _params(model: nn.Module) -> List[torch.nn.Parameter]:
    params = [p for name, p in model.named_parameters() if p.requires_grad and is_lora_param(name)]
    if not params:
        raise ValueError(f'{type(model).__name__} has no trainable LoRA tensors: enable LoRA in its config.')
    return params


def get_parameters(model: nn.Module) -> List[np.ndarray]:
    """Copies of the trainable LoRA tensors as float32 numpy arrays (frozen LoRA A of FFA-LoRA is excluded)."""
    return [p.detach().float().cpu().numpy().copy() for p in _params(model)]


def get_parameters_dict(model: nn.Module) -> Dict[str, np.ndarray]:
    """The same arrays as :func:`get_parameters`, keyed by parameter name (ordered as the list): the seed's
    ``lora_params[name].shape`` view. Flower exchanges the list; this is for inspection and saving."""
    return OrderedDict(zip(get_parameter_names(model), get_parameters(model)))


def set_parameters(model: nn.Module, params: Sequence[np.ndarray]) -> None:
    """Copy ``params`` (the order of :func:`get_parameters`) into the model's trainable LoRA tensors.

    Raises:
        ValueError: if the count differs or an array has the wrong shape (the tensor is named); nothing is
            changed then.
    """
    names = get_parameter_names(model)
    targets = _params(model)
    if len(params) != len(targets):
        raise ValueError(f'Expected {len(targets)} LoRA arrays, got {len(params)}.')
    for name, target, array in zip(names, targets, params):
        if tuple(np.shape(array)) != tuple(target.shape):
            raise ValueError(f'LoRA array for {name} has shape {tuple(np.shape(array))}, expected '
                             f'{tuple(target.shape)}.')
    with torch.no_grad():
        for target, array in zip(targets, params):
            target.copy_(torch.as_tensor(np.asarray(array), dtype=target.dtype, device=target.device))
