"""Load the official HaMeR checkpoint (PyTorch Lightning ``hamer.ckpt``) into :class:`HaMeRLoRA`.

Upstream keys: ``backbone.*`` (ViTPose-H: ``last_norm``, a ``pos_embed`` with a class slot that the forward adds to
every token), ``mano_head.*`` and ``discriminator.*`` (the same module names as ours), ``mano.*`` (smplx's MANO
buffers) and ``initialized``. Every key is either mapped or deliberately dropped; anything else is an error.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Tuple

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from ..backbones.vit_pretrained import adapt_pos_embed, extract_state_dict, rename_vit_keys

#: Upstream prefixes that are dropped, with the reason.
IGNORED_PREFIXES: Dict[str, str] = {
    'mano.': 'MANO buffers are rebuilt from the licensed MANO model file',
    'initialized': "HaMeR's ActNorm flag, unused",
}
#: Upstream prefixes copied into the model of the same name.
MAPPED_PREFIXES = ('backbone.', 'mano_head.', 'discriminator.')


#: Lightning's ``hyper_parameters`` hold HaMeR's yacs config; a ``CfgNode`` is a dict, so it unpickles as an inert
#: OrderedDict (the one dict subclass torch's ``weights_only`` unpickler can fill) instead of importing yacs.
_YACS_STAND_IN = (OrderedDict, 'yacs.config.CfgNode')


def read_hamer_checkpoint(path: str) -> Dict[str, Tensor]:
    """The state dict of a HaMeR checkpoint (Lightning ``{'state_dict': ...}`` or a bare state dict).

    Loaded with ``weights_only=True``; yacs ``CfgNode`` hyper-parameters unpickle into an inert OrderedDict.
    """
    from opentad_lora.engine.checkpoint import load_checkpoint_file

    with torch.serialization.safe_globals([_YACS_STAND_IN]):
        checkpoint = load_checkpoint_file(path)
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f'HaMeR checkpoint {path} holds no state dict.')
    return dict(state)


def convert_hamer_state_dict(state: Mapping[str, Any], backbone: nn.Module) -> Tuple[Dict[str, Tensor], List[str]]:
    """Map upstream HaMeR keys to ours.

    Args:
        state: Upstream state dict.
        backbone: Our ViT (its class-token count and grid decide how ``pos_embed`` is folded/resampled).

    Returns:
        ``(converted state dict, dropped upstream keys)``.

    Raises:
        ValueError: listing upstream keys that are neither mapped nor known to be droppable.
    """
    converted, dropped, unknown = {}, [], []
    backbone_state = rename_vit_keys(extract_state_dict(state, prefix='backbone.'))
    if 'pos_embed' in backbone_state and isinstance(getattr(backbone, 'pos_embed', None), nn.Parameter):
        backbone_state['pos_embed'] = adapt_pos_embed(backbone_state['pos_embed'], backbone.num_prefix_tokens,
                                                      backbone.patch_embed.grid_size)
    converted.update({f'backbone.{k}': v for k, v in backbone_state.items()})
    for key, value in state.items():
        if key.startswith('backbone.'):
            continue
        if key.startswith(MAPPED_PREFIXES[1:]):
            converted[key] = value
        elif any(key.startswith(prefix) for prefix in IGNORED_PREFIXES):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f'Unknown keys in the HaMeR checkpoint (expected prefixes {MAPPED_PREFIXES} or '
                         f'{tuple(IGNORED_PREFIXES)}): {unknown[:10]}')
    return converted, dropped


def to_hamer_state_dict(model: nn.Module) -> Dict[str, Tensor]:
    """The inverse map: a LoRA-free model's weights in HaMeR's upstream layout (what ``hamer.ckpt`` holds).

    Used to write stand-in "official" checkpoints for tiny configs. The backbone gets ViTPose's names
    (``last_norm``) and a ``pos_embed`` with a zero class slot (folding it gives back our ``pos_embed``); the
    MANO layer contributes smplx-named ``mano.*`` buffers and HaMeR's ``initialized`` flag is added.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(MAPPED_PREFIXES)}
    if 'backbone.norm.weight' in state:
        for suffix in ('weight', 'bias'):
            state[f'backbone.last_norm.{suffix}'] = state.pop(f'backbone.norm.{suffix}')
    pos = state.get('backbone.pos_embed')
    if pos is not None and getattr(model.backbone, 'num_prefix_tokens', 1) == 0:
        state['backbone.pos_embed'] = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
    mano = model.mano
    state.update({'mano.v_template': mano.v_template, 'mano.shapedirs': mano.shapedirs,
                  'mano.posedirs': mano.posedirs, 'mano.J_regressor': mano.J_regressor,
                  'mano.lbs_weights': mano.lbs_weights, 'mano.faces_tensor': torch.as_tensor(mano.faces),
                  'mano.parents': torch.as_tensor(mano.parents), 'mano.extra_joints_idxs': mano.tip_vertex_ids,
                  'mano.joint_map': mano.joint_map, 'initialized': torch.tensor(True)})
    return state


def load_hamer_checkpoint(model: nn.Module, path: str) -> List[str]:
    """Load an upstream HaMeR checkpoint into ``model`` (before LoRA is applied).

    Every persistent tensor of ``model.backbone``/``mano_head``/``discriminator`` must come from the file; the
    discriminator keys are dropped when the model has none.

    Returns:
        The upstream keys that were dropped.

    Raises:
        ValueError: naming the file and the missing, unexpected or mis-shaped keys.
    """
    converted, dropped = convert_hamer_state_dict(read_hamer_checkpoint(path), model.backbone)
    if getattr(model, 'discriminator', None) is None:  # an inference model: the discriminator is not needed
        dropped += [k for k in converted if k.startswith('discriminator.')]
        converted = {k: v for k, v in converted.items() if not k.startswith('discriminator.')}
    try:
        missing, unexpected = model.load_state_dict(converted, strict=False)
    except RuntimeError as err:
        raise ValueError(f'HaMeR checkpoint {path} does not fit the model: {err}') from None
    if missing or unexpected:
        raise ValueError(f'HaMeR checkpoint {path} does not fit the model: missing keys {missing[:10]}, '
                         f'unexpected keys {unexpected[:10]}')
    print_log(f'Loaded HaMeR checkpoint {path}: {len(converted)} tensors; dropped {len(dropped)} '
              f'({", ".join(IGNORED_PREFIXES)})', logger='current')
    return dropped
