"""Experimental FSDP for LoRA/QLoRA through MMEngine's ``FlexibleRunner``: a wrap policy and a fixed strategy.

FSDP1 flattens the parameters of each wrapped unit into one tensor and gathers it only around that unit's own
``forward``. LoRA layers read their ``lora_A``/``lora_B`` weights inside one fused function instead of calling those
sub-modules, so a LoRA layer must stay whole inside its unit: :func:`lora_fsdp_auto_wrap_policy` makes a unit of
every module whose class is in ``block_types`` and of every trainable leaf outside LoRA layers (a head, an adapter
layer), and never descends into a LoRA layer. A block unit then holds frozen base weights and trainable LoRA
weights together, which needs ``use_orig_params=True``; FSDP1 then keeps a gradient for the whole (sharded) flat
parameter, frozen part included (the PyTorch docs' caveat): the price of FSDP1 with LoRA. 4-bit bases need a float
``quant_storage`` (``LoRAConfig.quant_storage``) equal to the dtype of their block's other weights.

:class:`LoRAFSDPStrategy` is MMEngine 0.10.7's ``FSDPStrategy`` with two fixes: it passes the optimizer state to
``FSDP.optim_state_dict_to_load`` by keyword (0.10.7 passes it positionally in the pre-2.1 argument order, so
every resume failed on current torch), and it passes ``device_id`` as a device, ``cuda:LOCAL_RANK`` with CUDA and
``cpu`` without (0.10.7 always passes the index ``LOCAL_RANK``, read as a CUDA device, so it could not run on
CPU). On CPU it also turns off ``offload_to_cpu`` of the full state-dict configs, with which torch's FSDP1 crashes
(SIGSEGV) on CPU tensors.

Only config-built optimizers are supported (``optim_wrapper=dict(optimizer=...)``, the usual form); MMEngine's
re-sharding of an already-built optimizer keeps the positional call. Gradient clipping under FSDP1 clips by the
local shard's norm in MMEngine (it calls ``torch.nn.utils.clip_grad_norm_``), so leave ``clip_grad`` off here.
"""
import dataclasses
import os
from typing import Iterable

import torch
from mmengine._strategy import FSDPStrategy
from mmengine.registry import FUNCTIONS
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from opentad_lora.peft.layers import LoRALayer
from opentad_lora.registry import STRATEGIES


def _is_trainable_leaf(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return not list(module.children()) and bool(params) and all(p.requires_grad for p in params)


@FUNCTIONS.register_module()
def lora_fsdp_auto_wrap_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int,
                               block_types: Iterable[str] = ()) -> bool:
    """FSDP1 auto-wrap policy: a unit for every module whose class name is in ``block_types`` (e.g.
    ``['TransformerBlock']``) and for every trainable leaf module; LoRA layers are never split.

    Config form: ``auto_wrap_policy=dict(type='lora_fsdp_auto_wrap_policy', block_types=['TransformerBlock'])``.
    """
    if recurse:
        return not isinstance(module, LoRALayer)
    return _is_trainable_leaf(module) or type(module).__name__ in set(block_types)


def check_fsdp_dtypes(model: nn.Module) -> None:
    """Raise a ``ValueError`` naming the first parameter FSDP cannot flatten: a non-float one, or one whose dtype
    differs from the first parameter's (FSDP1 flattens a unit into one tensor of one dtype)."""
    first = None
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            raise ValueError(
                f'FSDP can only shard float parameters, but {name} is {param.dtype}. For 4-bit QLoRA set '
                "lora=dict(..., quant_storage='float32') (the dtype of the other weights); 8-bit bases cannot be "
                'sharded: train them with DDP.')
        first = first or (name, param.dtype)
        if param.dtype != first[1]:
            raise ValueError(
                f'FSDP flattens the parameters of a unit into one tensor of one dtype, but {name} is {param.dtype} '
                f'and {first[0]} is {first[1]}. Store every parameter in one dtype (leave lora.base_dtype unset under '
                'FSDP) or train with DDP.')


@STRATEGIES.register_module()
class LoRAFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` that resumes on current torch and also runs on CPU (see the module docstring)."""

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        check_fsdp_dtypes(model)
        if self.model_wrapper is None:
            self.model_wrapper = dict(type='MMFullyShardedDataParallel')
        on_cuda = torch.cuda.is_available()  # FSDP moves the (CPU-built) model to device_id itself
        if 'device_id' not in self.model_wrapper:
            local_rank = int(os.environ.get('LOCAL_RANK', 0))
            self.model_wrapper['device_id'] = torch.device('cuda', local_rank) if on_cuda else torch.device('cpu')
        if not on_cuda:
            for name in ('state_dict_config', 'optim_state_dict_config'):
                config = getattr(self, name)
                if getattr(config, 'offload_to_cpu', False):
                    setattr(self, name, dataclasses.replace(config, offload_to_cpu=False))
        return super()._wrap_model(model)

    def load_optim_state_dict(self, state_dict: dict) -> None:
        optim_state_dict = FSDP.optim_state_dict_to_load(model=self.model, optim=self.optim_wrapper.optimizer,
                                                         optim_state_dict=state_dict)
        self.optim_wrapper.load_state_dict(optim_state_dict)
