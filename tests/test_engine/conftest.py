"""Tiny LoRA model, dataset and Runner factory shared by the engine tests."""
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional
from uuid import uuid4

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

import opentad_lora.engine  # noqa: F401  (installs the safe loader and atomic writes)
from opentad_lora.peft import apply_lora


class ToyLoRANet(BaseModel):
    """Linear-BN-Linear backbone with LoRA on both Linears, a trainable norm + head; regression loss."""

    def __init__(self, lora: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = nn.Sequential(OrderedDict(
            fc1=nn.Linear(2, 8), bn=nn.BatchNorm1d(8), act=nn.ReLU(), fc2=nn.Linear(8, 8)))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 1)
        if lora:
            apply_lora(self, dict(r=2, alpha=4, dropout=dropout, targets=['fc1', 'fc2'],
                                  modules_to_save=['norm', 'head']))

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        x = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        out = self.head(self.norm(self.backbone(x))).squeeze(-1)
        if mode == 'loss':
            target = torch.stack(data_samples) if isinstance(data_samples, (list, tuple)) else data_samples
            return dict(loss=((out - target) ** 2).mean())
        return out


class ToyRegression(Dataset):
    """12 fixed 2-D points, target = x0 - 2 x1."""

    metainfo = dict(task='toy-regression')

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(123)
        self.x = torch.randn(12, 2, generator=generator)
        self.y = self.x[:, 0] - 2 * self.x[:, 1]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=self.x[index], data_samples=self.y[index])


@pytest.fixture(autouse=True)
def _restore_determinism():
    """Runner(randomness=dict(deterministic=True)) switches deterministic algorithms on process-wide."""
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture
def make_runner() -> Callable[..., Runner]:
    """Build a Runner on :class:`ToyLoRANet` (seeded) with the LoRA optimizer constructor and checkpoint hook."""

    def build(work_dir: Path, max_epochs: int = 2, model: Optional[nn.Module] = None, **kwargs) -> Runner:
        if model is None:
            torch.manual_seed(0)
            model = ToyLoRANet()
        cfg = dict(
            model=model, work_dir=str(work_dir), experiment_name=f'engine_{time.time()}_{uuid4().hex}',
            default_scope='opentad_lora',
            train_dataloader=dict(dataset=ToyRegression(), sampler=dict(type='DefaultSampler', shuffle=True),
                                  batch_size=3, num_workers=0),
            optim_wrapper=dict(constructor='LoRAOptimWrapperConstructor',
                               optimizer=dict(type='AdamW', lr=0.05, weight_decay=0.01)),
            param_scheduler=[dict(type='LinearLR', start_factor=0.5, by_epoch=True, begin=0, end=2)],
            train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
            default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                               checkpoint=dict(type='CheckpointHook', interval=1)),
            custom_hooks=[dict(type='LoRACheckpointHook')],
            randomness=dict(seed=0, deterministic=True),
            env_cfg=dict(dist_cfg=dict(backend='gloo')),
            log_level='WARNING',
        )
        cfg.update(kwargs)
        return Runner(**cfg)

    return build


@pytest.fixture
def toy_net() -> type:
    """The :class:`ToyLoRANet` class (``toy_net()`` has LoRA, ``toy_net(lora=False)`` is the plain network)."""
    return ToyLoRANet
