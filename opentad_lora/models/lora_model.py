"""``LoRAModel``: add LoRA to any registered module from the config, after loading its pretrained weights."""
from typing import Any, Dict, List, Optional, Union

from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn

from opentad_lora.engine.checkpoint import load_checkpoint_file
from opentad_lora.peft import LoRAConfig, apply_lora
from opentad_lora.registry import MODELS


def _state_dict_of(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The weights inside a loaded file: ``state_dict``/``model``/``module`` entry, or the file itself."""
    for key in ('state_dict', 'model', 'module'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _preview(keys: List[str]) -> str:
    return f'{len(keys)} ({", ".join(keys[:8])}{", ..." if len(keys) > 8 else ""})'


def load_pretrained(module: nn.Module, path: str, prefix: Optional[str] = None) -> None:
    """Load ``path`` into ``module`` strictly, through the safe loader.

    Args:
        module: Receives the weights.
        path: A ``torch.save`` file holding a state dict (possibly under ``state_dict``/``model``/``module``).
        prefix: Keep only keys under ``prefix.`` and strip it (e.g. ``'backbone'`` of a detector checkpoint).
            A ``module.`` prefix left by DDP on every key is stripped too.

    Raises:
        ValueError: naming the file, with the missing and unexpected keys, if they do not match exactly.
    """
    state = _state_dict_of(load_checkpoint_file(path))
    if prefix:
        head = prefix.rstrip('.') + '.'
        state = {k[len(head):]: v for k, v in state.items() if k.startswith(head)}
        if not state:
            raise ValueError(f'Pretrained file {path} has no key starting with {head!r}.')
    if state and all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        raise ValueError(f'Pretrained file {path} does not fit {type(module).__name__}: {err}') from None
    missing = [k for k in result.missing_keys if not k.endswith('num_batches_tracked')]
    if missing or result.unexpected_keys:
        raise ValueError(f'Pretrained file {path} does not match {type(module).__name__}: missing keys '
                         f'{_preview(missing)}; unexpected keys {_preview(result.unexpected_keys)}.')
    print_log(f'Loaded pretrained weights of {type(module).__name__} from {path} ({len(state)} tensors).',
              logger='current')


@MODELS.register_module()
class LoRAModel(BaseModule):
    """Wrap a registered module, load its pretrained weights, then add LoRA to it.

    The base weights are loaded in ``__init__`` (before ``apply_lora``, which may quantize them), so a LoRA-only
    checkpoint can be evaluated without ``init_weights`` (``tools/test.py`` never calls it). Without ``pretrained``
    the module's own ``init_weights()`` (its ``init_cfg``) runs here instead; afterwards :meth:`init_weights` does
    nothing, so a Runner cannot re-initialise the loaded base nor the LoRA B=0 start.

    Attributes and methods the wrapper lacks fall through to the wrapped module (``train_step``,
    ``data_preprocessor``, ...), and ``forward`` delegates. The wrapped module is ``self.model`` (not ``module``:
    MMEngine strips a leading ``module.`` from checkpoint keys when loading); adapter files are written relative to
    it (:attr:`adapter_root`), so their keys match the plain module as PEFT expects.

    Args:
        module: Config of the module to wrap (or a built module).
        lora: ``LoRAConfig`` or a dict of its fields; targets are relative to the wrapped module.
        pretrained: Checkpoint of the plain module, loaded strictly with the safe ``weights_only`` loader.
        pretrained_prefix: Take the weights under this key prefix of ``pretrained`` (prefix stripped).
        data_preprocessor: Passed into ``module``'s config when given (for a wrapped ``BaseModel``).
        init_cfg: MMEngine init config of the wrapper itself.
    """

    def __init__(self, module: Union[dict, nn.Module], lora: Union[dict, LoRAConfig], pretrained: Optional[str] = None,
                 pretrained_prefix: Optional[str] = None, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if isinstance(module, nn.Module):
            if data_preprocessor is not None:
                raise ValueError('data_preprocessor can only be passed to a module given as a config.')
            self.model = module
        else:
            module = dict(module)
            if data_preprocessor is not None:
                module.setdefault('data_preprocessor', data_preprocessor)
            self.model = MODELS.build(module)
        if pretrained is not None:
            load_pretrained(self.model, pretrained, pretrained_prefix)
        elif hasattr(self.model, 'init_weights'):
            self.model.init_weights()
        self.lora_report = apply_lora(self.model, lora)
        print_log(f'{type(self.model).__name__}: {self.lora_report}', logger='current')

    @property
    def adapter_root(self) -> nn.Module:
        """The module adapter files are relative to (see :func:`opentad_lora.engine.export.adapter_root`)."""
        return self.model

    def init_weights(self) -> None:
        """Nothing to do: the base was loaded or initialised at construction and LoRA initialised by apply_lora."""
        self._is_init = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == 'model':
                raise
            return getattr(super().__getattr__('model'), name)
