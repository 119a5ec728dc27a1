"""setup_launcher / setup_amp: the config edits tools/train.py applies (and CPU DDP under torchrun)."""
import socket

import pytest
import torch
import torch.distributed as torch_dist
from mmengine.config import Config

import opentad_lora.engine.runner_utils as runner_utils
from opentad_lora.engine import AnyDeviceDistributedDataParallel, setup_amp, setup_launcher


@pytest.fixture
def cuda(monkeypatch):
    """Pretend a CUDA device (with or without bf16) is present."""

    def set_cuda(available: bool, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: available)
        monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: int(available))  # MMLogger asks for it

    return set_cuda


@pytest.mark.parametrize('env, arg, expected', [
    ({}, 'none', 'none'),
    ({'WORLD_SIZE': '2', 'LOCAL_RANK': '0'}, 'none', 'pytorch'),
    ({'LOCAL_RANK': '1'}, 'none', 'pytorch'),
    ({'WORLD_SIZE': '4'}, 'slurm', 'slurm'),
])
def test_launcher_follows_torchrun_env(monkeypatch, cuda, env, arg, expected):
    for name in ('WORLD_SIZE', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cuda(False)
    monkeypatch.setattr(runner_utils, 'init_cpu_process_group', lambda backend: None)  # no real group here
    cfg = Config(dict(env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))))
    assert setup_launcher(cfg, arg) == expected
    assert cfg.launcher == expected and cfg.env_cfg.cudnn_benchmark is False


@pytest.mark.parametrize('has_cuda, configured, expected', [
    (False, 'nccl', 'gloo'), (False, None, 'gloo'), (True, None, 'nccl'), (True, 'gloo', 'gloo'),
    (True, 'nccl', 'nccl'),
])
def test_backend_matches_the_device(cuda, has_cuda, configured, expected):
    cuda(has_cuda)
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend=configured)) if configured else {}))
    setup_launcher(cfg, 'pytorch')
    assert cfg.env_cfg.dist_cfg.backend == expected


def test_amp_on_cpu_keeps_fp32(cuda):
    cuda(False)
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3))))
    assert setup_amp(cfg) is None
    assert 'type' not in cfg.optim_wrapper


@pytest.mark.parametrize('bf16, dtype', [(True, 'bfloat16'), (False, 'float16')])
def test_amp_on_cuda_picks_the_dtype(cuda, bf16, dtype):
    cuda(True, bf16)
    cfg = Config(dict(optim_wrapper=dict(constructor='LoRAOptimWrapperConstructor', clip_grad=dict(max_norm=1.0),
                                         optimizer=dict(type='AdamW', lr=1e-3))))
    assert setup_amp(cfg) == dtype
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.dtype == dtype
    assert cfg.optim_wrapper.loss_scale == 'dynamic' and cfg.optim_wrapper.clip_grad.max_norm == 1.0


def test_amp_converts_each_named_optimizer_and_leaves_other_wrappers(cuda):
    cuda(True)
    cfg = Config(dict(optim_wrapper=dict(
        constructor='LoRAOptimWrapperConstructor',
        generator=dict(optimizer=dict(type='AdamW', lr=1e-4)),
        discriminator=dict(type='DeepSpeedOptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)))))
    setup_amp(cfg)
    assert cfg.optim_wrapper.generator.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.discriminator.type == 'DeepSpeedOptimWrapper'


def test_cpu_ddp_under_torchrun_env_trains_through_the_runner(tmp_path, monkeypatch, cuda, make_runner):
    """What ``torchrun --nproc-per-node 1 tools/train.py`` does on CPU: gloo group, CPU-capable DDP wrapper."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    threads = str(torch.get_num_threads())  # set, so MMEngine does not overwrite them process-wide
    for name, value in dict(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK='0', WORLD_SIZE='1',
                            LOCAL_RANK='0', OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads).items():
        monkeypatch.setenv(name, value)
    cuda(False)
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    try:
        assert setup_launcher(cfg, 'none') == 'pytorch'
        assert torch_dist.is_initialized() and torch_dist.get_backend() == 'gloo'
        runner = make_runner(tmp_path, max_epochs=1, launcher='pytorch', env_cfg=cfg.env_cfg.to_dict(),
                             cfg=dict(model_wrapper_cfg=cfg.model_wrapper_cfg.to_dict()))
        assert isinstance(runner.model, AnyDeviceDistributedDataParallel) and runner.model.device_ids is None
        runner.train()
        assert runner.iter == 4 and (tmp_path / 'epoch_1.pth').exists()
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
