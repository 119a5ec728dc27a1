"""Official VGGT checkpoint layout -> :class:`DepthEstimator` keys.

The official ``VGGT`` model (``facebook/VGGT-1B`` ``model.pt``) is a flat state dict of ``aggregator.*``,
``camera_head.*``, ``depth_head.*``, ``point_head.*`` and ``track_head.*``. Our estimator keeps the official module
names of the parts it builds, so conversion means: unwrap the container (``model``/``state_dict``/``module``), strip
a DDP ``module.`` prefix, drop the heads the estimator does not build (point and track heads; the camera head when
it is disabled) and refuse anything that is not VGGT.
"""
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from torch import Tensor

VGGT_MODULES = ('aggregator', 'camera_head', 'depth_head', 'point_head', 'track_head')
_WRAPPER_KEYS = ('model', 'state_dict', 'module')


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, Tensor]:
    """The tensors of a checkpoint, under nested ``model``/``state_dict``/``module`` keys and a ``module.`` prefix."""
    state = checkpoint
    while not any(isinstance(v, Tensor) for v in state.values()):
        nested = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if nested is None:
            break
        state = nested
    state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if state and all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    return state


def convert_vggt_state_dict(checkpoint: Mapping[str, Any],
                            keep: Iterable[str] = ('aggregator', 'camera_head', 'depth_head')
                            ) -> Tuple[Dict[str, Tensor], List[str]]:
    """Map an official VGGT state dict (or checkpoint) to ours.

    Args:
        checkpoint: The loaded file.
        keep: Top-level VGGT modules the target model has.

    Returns:
        ``(state_dict, dropped)``: the kept tensors under our names and the names of the dropped ones.

    Raises:
        ValueError: if a key belongs to none of the VGGT modules (not a VGGT checkpoint), naming a few.
    """
    state = unwrap_state_dict(checkpoint)
    if not state:
        raise ValueError('The checkpoint holds no tensors.')
    foreign = sorted(k for k in state if k.split('.', 1)[0] not in VGGT_MODULES)
    if foreign:
        raise ValueError(f'Not an official VGGT checkpoint: {len(foreign)} keys outside {VGGT_MODULES}, e.g. '
                         f'{foreign[:5]}.')
    keep = set(keep)
    converted = {k: v for k, v in state.items() if k.split('.', 1)[0] in keep}
    dropped = sorted(k for k in state if k not in converted)
    return converted, dropped
