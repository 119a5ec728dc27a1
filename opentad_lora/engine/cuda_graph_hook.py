"""Eager training with chosen modules' forward and backward replayed as CUDA graphs (``cuda_graph`` in configs,
``--cuda-graph``).

Why: an eager LoRA step is bound by the host issuing kernels, not by the GPU (benchmarks/RESULTS.md: ~50 µs of
host time per kernel on the H200 host; a ViT-B b128 LoRA step issues ~1030 kernels, its frozen floor ~480).
``torch.cuda.make_graphed_callables`` captures a module's forward and its backward once and then replays each as
one launch, so the host's cost no longer grows with the kernels. Unlike ``torch.compile(mode='reduce-overhead')``
nothing is compiled: the kernels are the eager ones (our fused LoRA function and its Triton kernels included) and
capture costs three warm-up passes and one captured pass, seconds instead of minutes.

:class:`GraphedForward` replaces a module's ``forward`` (the module itself stays, so parameter names, checkpoints
and ``--resume`` are those of the eager model) and captures on the first training call, with that call's inputs.
Later calls replay the graphs when they match the captured call: the same input shapes, dtypes and
``requires_grad``, the same autocast state, training mode with gradients on. Any other call (validation, a last
smaller batch, ``torch.no_grad``) runs the eager forward; a training call that does not match is logged once.

torch's contract applies (see ``make_graphed_callables``): no data-dependent control flow or host synchronisation
inside the module, parameters updated in place only (optimizers and ``load_state_dict`` do), no hooks on the
module itself when it is captured. Random ops (dropout, our Triton dropout kernels, whose seeds torch's generator
draws on the device) draw fresh numbers at each replay. The graphs keep their own memory pool, which holds one step's
activations between steps; ``torch.cuda.max_memory_allocated`` (MMEngine's ``memory`` in the log) does not count it
after capture, ``max_memory_reserved`` does (benchmarks/RESULTS.md, session 12: ViT-B b128 LoRA reserves 7.06 GiB
graphed against 6.50 GiB eager).
"""
import logging
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn
from torch.utils._pytree import tree_flatten

from opentad_lora.registry import HOOKS

Capture = Callable[..., nn.Module]  # torch.cuda.make_graphed_callables' signature, for one module


def _call_signature(args: Tuple[Any, ...], device_type: str) -> Optional[tuple]:
    """What a replay needs to be the captured call: the input tree, each tensor's shape/dtype/device/requires_grad,
    the autocast state. None when an input is not a tensor on ``device_type`` (not capturable)."""
    leaves, spec = tree_flatten(args)
    if not leaves or not all(isinstance(leaf, torch.Tensor) and leaf.device.type == device_type for leaf in leaves):
        return None
    tensors = tuple((leaf.shape, leaf.dtype, leaf.device, leaf.requires_grad) for leaf in leaves)
    return spec, tensors, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class GraphedForward:
    """A module's ``forward`` that captures itself as CUDA graphs on the first training call and replays them.

    Args:
        module: The module (its parameters on a CUDA device).
        name: Its name, for the log.
        warmup_iters: Eager passes before capture (torch's ``num_warmup_iters``).
        capture: ``torch.cuda.make_graphed_callables``; with ``device_type``, parameters so that the dispatch can be
            tested without a GPU.
        device_type: The device of the inputs it captures.
    """

    def __init__(self, module: nn.Module, name: str = '', warmup_iters: int = 3,
                 capture: Capture = torch.cuda.make_graphed_callables, device_type: str = 'cuda') -> None:
        if 'forward' in module.__dict__:
            raise ValueError(f'{name or type(module).__name__}: its forward is already replaced (compiled, or '
                             'graphed twice); CUDA graphs need the module\'s own forward.')
        self.module, self.name, self.warmup_iters = module, name or type(module).__name__, warmup_iters
        self._capture, self.device_type = capture, device_type
        self.eager = module.forward
        self.signature: Optional[tuple] = None
        self._graphed: Optional[Callable[..., Any]] = None
        self._trainable: List[nn.Parameter] = []
        self._logged_mismatch = False
        module.forward = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs or not self.module.training or not torch.is_grad_enabled():
            return self.eager(*args, **kwargs)
        signature = _call_signature(args, self.device_type)
        if signature is not None and self._graphed is None:
            self._capture_graphs(args, signature)
        if signature is None or signature != self.signature:
            self._log_mismatch(signature)
            return self.eager(*args)
        self._copy_out_held_grads()
        return self._graphed(*args)

    def restore(self) -> None:
        """Give the module back its own forward (the graphs are dropped with this object)."""
        self.module.__dict__.pop('forward', None)

    def _capture_graphs(self, args: Tuple[Any, ...], signature: tuple) -> None:
        module = self.module
        del module.forward  # torch calls module(*args): its class forward while capturing
        leaves, spec = tree_flatten(args)
        sample = spec.unflatten([leaf.detach().clone().requires_grad_(leaf.requires_grad) for leaf in leaves])
        try:
            # autocast's weight-cast cache would keep casts made inside the capture: torch refuses it
            device = self.device_type
            with torch.autocast(device, dtype=torch.get_autocast_dtype(device),
                                enabled=torch.is_autocast_enabled(device), cache_enabled=False):
                self._capture(module, sample, num_warmup_iters=self.warmup_iters)
        except AssertionError as err:  # torch states its contract with asserts (hooks, trainable buffers)
            raise RuntimeError(f'CUDA graph capture of {self.name}: {err}') from err
        finally:
            self._graphed = module.__dict__.pop('forward', None)  # torch's dispatch to the graphs
            module.forward = self
        self.signature = signature
        self._trainable = [param for param in module.parameters() if param.requires_grad]
        print_log(f'CUDA graphs: captured {self.name} (inputs {[tuple(leaf.shape) for leaf in leaves]}, '
                  f'{len(self._trainable)} trainable tensors)', logger='current')

    def _copy_out_held_grads(self) -> None:
        """A replay rewrites the graph's gradient buffers, which autograd may have handed to ``param.grad`` as they
        are. Gradients still there from an earlier backward (accumulation over micro-batches) are copied out
        first, so the next backward adds to them instead of overwriting them (one foreach launch)."""
        held = [param for param in self._trainable if param.grad is not None]
        if held:
            for param, grad in zip(held, torch._foreach_mul([param.grad for param in held], 1.0)):
                param.grad = grad

    def _log_mismatch(self, signature: Optional[tuple]) -> None:
        if self._logged_mismatch:
            return
        self._logged_mismatch = True
        why = (f'an input is not a {self.device_type} tensor' if signature is None
               else 'its inputs differ from the captured call')
        print_log(f'CUDA graphs: a training call of {self.name} runs eagerly ({why}); calls like it will too.',
                  logger='current', level=logging.WARNING)


@HOOKS.register_module()
class CUDAGraphHook(Hook):
    """Replays the forward and backward of ``modules`` as CUDA graphs during training (see the module docstring).

    Args:
        modules: Names of the sub-modules to graph (``model.get_submodule`` names; ``''`` is the whole model). The
            loss and what varies per batch (targets, masks of another length) belong outside them.
        warmup_iters: Eager passes before each capture.
    """

    priority = 'LOW'

    def __init__(self, modules: Sequence[str] = ('backbone',), warmup_iters: int = 3) -> None:
        if isinstance(modules, str) or not modules:
            raise ValueError(f'CUDAGraphHook: modules must be a non-empty list of module names, got {modules!r}.')
        self.modules, self.warmup_iters = tuple(modules), int(warmup_iters)
        self._installed: List[GraphedForward] = []

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        chosen = []
        for name in self.modules:
            try:
                chosen.append((name, model.get_submodule(name)))
            except AttributeError:
                children = [child for child, _ in model.named_children()]
                raise ValueError(f'CUDAGraphHook: the model has no module {name!r} (its children: {children}); '
                                 'set cuda_graph.modules to module names.') from None
        devices = {param.device.type for _, module in chosen for param in module.parameters()}
        if devices != {'cuda'}:
            print_log(f'CUDA graphs need the modules on a CUDA device (they are on {sorted(devices)}): training '
                      'runs eagerly.', logger='current', level=logging.WARNING)
            return
        self._installed = [GraphedForward(module, name, self.warmup_iters) for name, module in chosen]

    def after_train(self, runner) -> None:
        for graphed in self._installed:
            graphed.restore()
        self._installed = []
