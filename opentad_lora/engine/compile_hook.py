"""Compiled training: ``torch.compile`` of the model's loss computation (``compile`` in configs, ``--compile``).

MMEngine 0.10.7's Runner compiles ``model.train_step`` as a whole when a config sets ``compile``, which also traces
the optimizer step and its Python-float learning rate. On the quickstart config (2 CPU cores, inductor) that took
348 s for the first iteration and 10-110 s for each of the next five, against 0.13 s eager. :class:`CompileHook`
compiles what a step spends its time on instead: the model's ``forward`` in ``mode='loss'`` (and, through
AOTAutograd, its backward). Optimizer, gradient clipping, hooks, validation and test stay eager, so an LR schedule
never recompiles and evaluation costs no compile time.

The module itself is not replaced: only its ``forward`` attribute, for the duration of training. Parameter names,
``state_dict`` keys and DDP wrapping are those of the eager model, so checkpoints are ordinary ones (they load in an
eager ``tools/test.py``) and ``--resume`` works either way. ``tools/train.py`` turns a config's ``compile`` (``True``
or ``torch.compile`` keyword arguments, MMEngine's format) or ``--compile`` into this hook
(:func:`opentad_lora.engine.runner_utils.setup_compile`).
"""
from typing import Any, Callable, Optional

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from opentad_lora.registry import HOOKS


class LossForward:
    """A ``forward`` that runs ``compiled`` for ``mode='loss'`` calls and ``eager`` for every other call."""

    def __init__(self, eager: Callable[..., Any], compiled: Callable[..., Any]) -> None:
        self.eager = eager
        self.compiled = compiled

    def __call__(self, *args: Any, mode: str = 'tensor', **kwargs: Any) -> Any:
        function = self.compiled if mode == 'loss' else self.eager
        return function(*args, mode=mode, **kwargs)


@HOOKS.register_module()
class CompileHook(Hook):
    """Compile the model's loss forward for training; restore the eager ``forward`` after it.

    Args:
        **compile_kwargs: Keyword arguments of ``torch.compile`` (``backend``, ``mode``, ``dynamic``, ...).
    """

    priority = 'VERY_HIGH'  # after_train: the eager forward is back before exports copy the model

    def __init__(self, **compile_kwargs: Any) -> None:
        self.compile_kwargs = compile_kwargs
        self._model: Optional[torch.nn.Module] = None

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        eager = model.forward
        model.forward = LossForward(eager, torch.compile(eager, **self.compile_kwargs))
        self._model = model
        print_log(f'CompileHook: {type(model).__name__}.forward(mode="loss") compiled with '
                  f'torch.compile({self.compile_kwargs}); the first iteration includes the compile time.',
                  logger='current')

    def after_train(self, runner) -> None:
        if self._model is not None and isinstance(self._model.__dict__.get('forward'), LossForward):
            del self._model.forward  # back to the class's forward
        self._model = None
