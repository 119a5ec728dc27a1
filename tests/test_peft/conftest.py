"""Fixtures of the PEFT-core tests."""
from typing import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages that autograd keeps for backward while ``fn()`` builds its graph."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


@pytest.fixture
def saved_bytes() -> Callable[[Callable[[], object]], int]:
    return _saved_bytes


def _autograd_functions_in(graph_module: torch.fx.GraphModule) -> list:
    """The autograd functions called in a dynamo graph and its subgraphs (a checkpointed block is one), each as the
    name of the class whose ``apply`` makes the call (from the call's source line)."""
    names = []
    for module in graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                if 'autograd_function_apply' in str(node.target):
                    line = [text for text in node.meta.get('stack_trace', '').splitlines() if '.apply(' in text]
                    names.append(line[-1].split('.apply(')[0].split()[-1].split('=')[-1] if line else '?')
    return names


@pytest.fixture
def autograd_functions_in() -> Callable[[torch.fx.GraphModule], list]:
    return _autograd_functions_in


class _OpLog(TorchDispatchMode):
    """Records every op dispatched under it (those issued by the code run in it, not those inside a kernel):
    ``ops`` their names, ``made`` ``(name, shape)`` of each tensor they return."""

    def __init__(self) -> None:
        super().__init__()
        self.ops, self.made = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append(str(func))
        if isinstance(out, torch.Tensor):
            self.made.append((str(func), tuple(out.shape)))
        return out


@pytest.fixture
def op_log() -> _OpLog:
    """A fresh op recorder: ``with op_log as log: ...``."""
    return _OpLog()


def _bnb_dequantize_4bit(data: torch.Tensor, state, dtype: torch.dtype) -> torch.Tensor:
    """bitsandbytes' 4-bit dequantization asked for ``dtype`` (a float32 product rounded once), by its
    device-independent torch code, uncompiled.

    Not its CPU op: in bitsandbytes 0.50 that op's AVX-512 code takes blocks row by row and gives wrong values where
    a row is not whole blocks (a relative error of ~1 against the float weight). The torch code's FP4 table has +0.0
    for code 8 where bitsandbytes' CUDA and other CPU kernels give -0.0, as ours do: compare the sign of zero apart
    (``t + 0.0`` turns -0.0 into +0.0 and changes nothing else)."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code
    from bitsandbytes.functional import dequantize_blockwise
    absmax = state.absmax
    if state.nested:
        absmax = dequantize_blockwise(state.absmax, state.state2) + state.offset
    code = _get_4bit_code(state.quant_type, data.device)
    return _dequantize_4bit_compute.__wrapped__(data.view(torch.uint8).reshape(-1), absmax.float(), code,
                                                state.blocksize, state.shape, dtype)


@pytest.fixture
def bnb_dequantize_4bit() -> Callable[..., torch.Tensor]:
    return _bnb_dequantize_4bit
