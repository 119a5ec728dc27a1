"""What a federated run does with our models, independent of Flower: build the model/datasets from the config,
train a client for E local epochs with the config's optimizer, evaluate, and move the global state in and out.

The global state is the list of trainable LoRA tensors (:func:`get_parameters` order), followed, for ``exact``
aggregation with ``residual='base'``, by one dense residual per LoRA layer that is folded into the frozen base
weight (``W = W0 + s * residual``).
"""
import copy
import hashlib
import json
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.dataset import pseudo_collate
from torch import nn
from torch.utils.data import DataLoader, Subset

from opentad_lora.peft import is_quantized, iter_lora_layers
from .aggregation import METHODS, LoRALayout
from .params import get_parameter_names, get_parameters, is_lora_param, set_parameters

RESIDUAL_MODES = ('none', 'base')
_MODEL_CACHE: Dict[str, nn.Module] = {}  # one model per process (a Ray actor serves many rounds and clients)


def freeze_lora_a(model: nn.Module) -> None:
    """Freeze every LoRA A matrix (FFA-LoRA): only B trains and is exchanged."""
    for _, layer in iter_lora_layers(model):
        for lora_a in layer.lora_A.values():
            lora_a.requires_grad_(False)


def lora_a_digest(model: nn.Module) -> str:
    """SHA-256 of all LoRA A matrices: FFA clients check theirs equals the server's (same seed, same A)."""
    digest = hashlib.sha256()
    for _, layer in iter_lora_layers(model):
        for lora_a in layer.lora_A.values():
            digest.update(lora_a.weight.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def secagg_settings(fed: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The SecAgg+ settings of ``federated.secagg`` (``dict(enabled=True, max_weight=..., ...)``, the keyword
    arguments of Flower's ``SecAggPlusWorkflow``) without ``enabled``; None when it is absent or disabled."""
    secagg = fed.get('secagg') or {}
    if not isinstance(secagg, dict):
        raise ValueError(f'federated.secagg must be a dict (enabled=True, max_weight=...), got {secagg!r}.')
    return {k: v for k, v in secagg.items() if k != 'enabled'} if secagg.get('enabled') else None


class FederatedTask:
    """One federated experiment's model/data/training recipe, shared by the server and every client.

    Args:
        cfg: Plain dict with ``model``, ``train_dataset``, ``test_dataset``, ``optim_wrapper`` and ``federated``
            (``strategy``, ``residual``, ``local_epochs``, ``batch_size``, ``seed``...), see ``configs/clip``.
    """

    def __init__(self, cfg: Dict[str, Any]) -> None:
        self.cfg = cfg
        fed = cfg['federated']
        self.method = fed.get('strategy', 'fedavg')
        self.residual = fed.get('residual', 'none')
        if self.method not in METHODS:
            raise ValueError(f'federated.strategy must be one of {METHODS}, got {self.method!r}.')
        if self.residual not in RESIDUAL_MODES or (self.residual == 'base' and self.method != 'exact'):
            raise ValueError(f"federated.residual must be one of {RESIDUAL_MODES} ('base' only with strategy='exact'),"
                             f' got {self.residual!r}.')
        self.secagg = secagg_settings(fed)
        if self.secagg is not None and self.method == 'exact':
            raise ValueError("federated.secagg (SecAgg+) works with strategy 'fedavg' or 'ffa' only: 'exact' needs "
                             "every client's product B_k A_k, and SecAgg+ reveals only the sum of what the clients "
                             "send. Use strategy='ffa' (exact too, with A frozen) or set federated.secagg=None.")
        self.local_epochs = int(fed.get('local_epochs', 1))
        self.batch_size = int(fed.get('batch_size', 16))
        self.seed = int(fed.get('seed', 0))

    # -- building ------------------------------------------------------------------------------------------------
    def build_model(self, cached: bool = False) -> nn.Module:
        """The model of the config (``cached``: reuse this process's copy; its state is reset by ``load_global``).

        Raises:
            ValueError: if a non-LoRA tensor is trainable (it would never be synchronised), or if
                ``residual='base'`` meets a quantized base (a dense residual cannot be added to 4/8-bit weights).
        """
        key = json.dumps([self.cfg['model'], self.method, self.residual], sort_keys=True, default=str)
        if cached and key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
        from mmengine.registry import init_default_scope

        from opentad_lora.registry import MODELS
        init_default_scope('opentad_lora')
        model = MODELS.build(copy.deepcopy(self.cfg['model']))
        if self.method == 'ffa':
            freeze_lora_a(model)
        stray = [n for n, p in model.named_parameters() if p.requires_grad and not is_lora_param(n)]
        if stray:
            raise ValueError(f'Federated LoRA exchanges LoRA tensors only, but {stray[:5]} are trainable too: '
                             'freeze them (no modules_to_save / full fine-tuning in federated runs).')
        if self.residual == 'base':  # W0, kept on the model: residuals are applied as W = W0 + s * residual
            quantized = [name for name, layer in iter_lora_layers(model) if is_quantized(layer.base_layer)]
            if quantized:
                raise ValueError(f"federated.residual='base' adds dense residuals to the base weights, but "
                                 f"{quantized[:3]} have 4/8-bit bases: use residual='none' with QLoRA, or a float "
                                 'base.')
            model._federated_base_weights = {name: layer.base_layer.weight.detach().clone()
                                             for name, layer in iter_lora_layers(model)}
        if cached:
            _MODEL_CACHE[key] = model
        return model

    def build_dataset(self, split: str) -> Any:
        """``split`` is ``'train'`` or ``'test'`` (``cfg[split + '_dataset']``)."""
        from mmengine.registry import init_default_scope

        from opentad_lora.registry import DATASETS
        init_default_scope('opentad_lora')
        return DATASETS.build(copy.deepcopy(self.cfg[f'{split}_dataset']))

    def loader(self, dataset: Any, indices: Optional[Sequence[int]] = None, shuffle: bool = False,
               seed: int = 0) -> DataLoader:
        subset = dataset if indices is None else Subset(dataset, [int(i) for i in indices])
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(subset, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=pseudo_collate, num_workers=0)

    # -- global state --------------------------------------------------------------------------------------------
    def layout(self, model: nn.Module) -> LoRALayout:
        return LoRALayout(get_parameter_names(model))

    def global_state(self, model: nn.Module, residuals: Optional[Dict[str, np.ndarray]] = None) -> List[np.ndarray]:
        """The arrays the server sends: LoRA tensors (+ residuals in layer order, zeros when not given)."""
        arrays = get_parameters(model)
        if self.residual == 'base':
            layers = dict(iter_lora_layers(model))
            for layer in self.layout(model).pairs:
                shape = tuple(layers[layer].base_layer.weight.shape)
                arrays.append((residuals or {}).get(layer, np.zeros(shape, np.float32)).astype(np.float32))
        return arrays

    def load_global(self, model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
        """Set the LoRA tensors and, with residuals, ``W = W0 + s * residual`` for every LoRA layer."""
        count = len(get_parameter_names(model))
        set_parameters(model, arrays[:count])
        if self.residual != 'base':
            return
        layers, base = dict(iter_lora_layers(model)), model._federated_base_weights
        pairs = list(self.layout(model).pairs)
        if len(arrays) != count + len(pairs):
            raise ValueError(f'Expected {count} LoRA arrays + {len(pairs)} residuals, got {len(arrays)} arrays.')
        with torch.no_grad():
            for layer, residual in zip(pairs, arrays[count:]):
                lora = layers[layer]
                delta = torch.as_tensor(np.asarray(residual), dtype=torch.float32) * lora.scaling[lora.active_adapter]
                weight = lora.base_layer.weight
                weight.copy_((base[layer].to(weight.device).float() + delta.to(weight.device)).to(weight.dtype))

    # -- training and evaluation ---------------------------------------------------------------------------------
    def train_local(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        """``local_epochs`` epochs of ``model.train_step`` with an optimizer built from ``cfg['optim_wrapper']``."""
        from mmengine.optim import build_optim_wrapper
        from mmengine.registry import init_default_scope
        init_default_scope('opentad_lora')
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(self.cfg['optim_wrapper']))
        model.train()
        losses = []
        for _ in range(self.local_epochs):
            for batch in loader:
                loss = model.train_step(batch, optim_wrapper)['loss']
                losses.append(float(loss.detach() if torch.is_tensor(loss) else loss))
        return dict(train_loss=float(np.mean(losses)) if losses else 0.0)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        """Mean cross-entropy and top-1/top-5 accuracy (percent) of ``model`` on ``loader``."""
        from opentad_lora.evaluation.classification.functional import topk_accuracy
        model.eval()
        logits, labels = [], []
        for batch in loader:
            data = model.data_preprocessor(batch, False)
            logits.append(model(**data, mode='tensor').float())
            labels.append(torch.stack([s.gt_label for s in data['data_samples']]).reshape(-1))
        logits, labels = torch.cat(logits), torch.cat(labels)
        acc = topk_accuracy(logits, labels, (1, 5))
        loss = float(torch.nn.functional.cross_entropy(logits, labels))
        return dict(loss=loss, top1=acc[1], top5=acc[5], num_samples=int(len(labels)))
