"""``TrainableEMAHook``: MMEngine's ``EMAHook`` averaging only the trainable tensors (OpenTAD's ``solver.ema``).

MMEngine's hook deep-copies the whole model into its ``ExponentialMovingAverage``; for a LoRA/QLoRA model that is a
second copy of the frozen (possibly 4-bit packed) base that never changes. This hook hands MMEngine's averaged model
a *view* instead: a module tree with the model's own names that holds only the trainable parameters (the very same
``Parameter`` objects). Everything else is MMEngine's: the averaging (``ExponentialMovingAverage.lerp_``), swapping
the averaged weights in for validation and test, ``ema_state_dict`` in checkpoints (the checkpoint's ``state_dict``
holds the averaged weights, as MMEngine's hook writes it), and restoring both on ``--resume``. Frozen tensors are
never read or written; buffers follow the model (MMEngine's ``update_buffers=False``). In a test or validation run
(``tools/test.py``) the hook does nothing: the checkpoint's ``state_dict`` already is the average.

OpenTAD (``opentad/utils/ema.py``) keeps ``ema = decay * ema + (1 - decay) * w`` with ``decay=0.999`` after every
optimizer step, starting from the weights before the first step: ``momentum=0.001`` here, and the first average is
taken in ``before_train`` so that the start is the same.
"""
import logging
from contextlib import contextmanager
from typing import Any, Dict, Iterator

from mmengine.hooks import EMAHook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import MODELS
from torch import nn

from opentad_lora.registry import HOOKS


def trainable_view(model: nn.Module) -> nn.Module:
    """A module tree with ``model``'s names holding only its trainable parameters (shared, not copied)."""
    root = nn.Module()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        *path, leaf = name.split('.')
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        module.register_parameter(leaf, param)
    return root


@HOOKS.register_module()
class TrainableEMAHook(EMAHook):
    """Exponential moving average of the trainable parameters, evaluated and checkpointed as OpenTAD does.

    Args:
        ema_type: An averaged-model class of MMEngine (``'ExponentialMovingAverage'``, ``'MomentumAnnealingEMA'``,
            ``'StochasticWeightAverage'``).
        momentum: Weight of the new value per update (OpenTAD's ``1 - decay``).
        begin_iter: First iteration that averages (before it the average copies the weights).
        begin_epoch: First epoch that averages; exclusive with ``begin_iter``.
        **kwargs: Further arguments of ``ema_type`` (``interval``, ``gamma``, ...).
    """

    def __init__(self, ema_type: str = 'ExponentialMovingAverage', momentum: float = 0.001, begin_iter: int = 0,
                 begin_epoch: int = 0, **kwargs: Any) -> None:
        if kwargs.get('update_buffers'):
            raise ValueError('TrainableEMAHook averages trainable parameters only; buffers follow the model '
                             '(update_buffers=False). Use mmengine EMAHook to average buffers too.')
        if ema_type != 'StochasticWeightAverage':
            kwargs['momentum'] = momentum
        super().__init__(ema_type=ema_type, begin_iter=begin_iter, begin_epoch=begin_epoch, **kwargs)
        self._averaging = False  # set by before_train: validation swaps the average in only while training
        self._restart = False  # a resumed checkpoint without an average: start one from the resumed weights

    def before_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.src_model = trainable_view(model)
        if not self.src_model._modules and not self.src_model._parameters:
            raise ValueError(f'TrainableEMAHook: {type(model).__name__} has no trainable parameter to average.')
        self.ema_model = MODELS.build(self.ema_cfg, default_args=dict(model=self.src_model))

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._averaging = True
        if (runner.iter == 0 or self._restart) and self.begin_iter == 0 and not self.enabled_by_epoch:
            self.ema_model.update_parameters(self.src_model)  # OpenTAD: the average starts at the initial weights
        self._restart = False

    def after_load_checkpoint(self, runner, checkpoint: Dict[str, Any]) -> None:
        """On ``--resume`` restore the average (MMEngine's swap and load); otherwise nothing to do.

        A checkpoint loaded for test/val (or as ``load_from``) holds the average as its ``state_dict`` and the model
        gets exactly that; training from it starts a new average at ``before_train``.
        """
        if not runner._resume or not hasattr(self, 'ema_model'):
            return
        if 'ema_state_dict' in checkpoint:
            super().after_load_checkpoint(runner, checkpoint)
        else:
            print_log('There is no `ema_state_dict` in the checkpoint: the average restarts from its weights.',
                      logger='current', level=logging.WARNING)
            self._restart = True

    def _swap_ema_parameters(self) -> None:
        """Swap only in a training run: outside one, the loaded ``state_dict`` already is the average."""
        if self._averaging:
            super()._swap_ema_parameters()


@contextmanager
def ema_weights(runner) -> Iterator[None]:
    """Within the block the model holds the averaged weights of every EMA hook of ``runner`` (none: unchanged).

    Used by writers of weights outside Runner checkpoints (LoRA adapter folders, merged models), so that every file
    a user evaluates holds the weights ``tools/test.py`` evaluates. Swapping copies tensors: nothing is lost.
    """
    hooks = [hook for hook in getattr(runner, 'hooks', ()) if isinstance(hook, EMAHook) and hasattr(hook, 'ema_model')]
    for hook in hooks:
        hook._swap_ema_parameters()
    try:
        yield
    finally:
        for hook in reversed(hooks):
            hook._swap_ema_parameters()
