"""DDP on CPU through MMEngine 0.10.7's Runner (``torchrun`` + gloo), which the Runner alone cannot start.

Two things stop it: ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` before creating the process group, and
``Runner.wrap_model`` hands ``device_ids=[LOCAL_RANK]`` to DDP, which DDP rejects for a module on CPU. So
:func:`init_cpu_process_group` creates the gloo group first (the Runner then skips ``init_dist``), and
:class:`AnyDeviceDistributedDataParallel` drops ``device_ids`` when the module lives on CPU.
"""
import os
from typing import Any, Optional, Sequence

import torch
import torch.distributed as torch_dist
from mmengine.model import MMDistributedDataParallel
from torch import nn

from opentad_lora.registry import MODEL_WRAPPERS

TORCHRUN_ENV = ('WORLD_SIZE', 'LOCAL_RANK')


@MODEL_WRAPPERS.register_module()
class AnyDeviceDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also wraps a module on CPU (``device_ids`` dropped there)."""

    def __init__(self, module: nn.Module, device_ids: Optional[Sequence[int]] = None, **kwargs: Any) -> None:
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)


def init_cpu_process_group(backend: str = 'gloo') -> bool:
    """Create the process group from ``torchrun``'s environment if it does not exist; returns whether it did.

    Only for CPU training: with CUDA, MMEngine's own ``init_dist`` does the right thing.
    """
    if torch.cuda.is_available() or torch_dist.is_initialized() or not all(k in os.environ for k in TORCHRUN_ENV):
        return False
    torch_dist.init_process_group(backend=backend)
    return True

