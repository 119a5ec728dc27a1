"""TensorBoard logging that switches itself off (with one warning) when ``tensorboard`` is not installed.

MMEngine text configs cannot test for a package, so ``configs/_base_/default_runtime.py`` always lists this
backend; it behaves like MMEngine's ``TensorboardVisBackend`` when TensorBoard is importable and does nothing
otherwise, instead of crashing the first time a scalar is logged.
"""
import warnings
from typing import Any, Callable

from mmengine.visualization import TensorboardVisBackend

from opentad_lora.registry import VISBACKENDS


class _NullWriter:
    """Accepts every ``SummaryWriter`` call and does nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


@VISBACKENDS.register_module()
class OptionalTensorboardVisBackend(TensorboardVisBackend):
    """``TensorboardVisBackend`` when ``tensorboard`` imports; a no-op backend (and a warning) when it does not."""

    def _init_env(self) -> Any:
        try:
            super()._init_env()
        except ImportError as err:
            warnings.warn(f'TensorBoard logging is off ({err}); install it with `pip install tensorboard`.')
            self._tensorboard = _NullWriter()
