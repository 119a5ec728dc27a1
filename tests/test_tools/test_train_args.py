"""tools/train.py and tools/test.py argument handling (mmpretrain's contract), without building a Runner."""
from pathlib import Path

import pytest
from mmengine.config import Config

CONFIG = Path(__file__).resolve().parents[2] / 'configs' / 'quickstart' / 'vit_lora_synthetic_cls.py'


@pytest.fixture(scope='module')
def train_tool(load_tool):
    return load_tool('train')


@pytest.fixture(scope='module')
def test_script(load_tool):
    return load_tool('test')


@pytest.fixture
def train_cfg(train_tool):
    def build(*argv: str) -> Config:
        return train_tool.merge_args(Config.fromfile(str(CONFIG)), train_tool.parse_args([str(CONFIG), *argv]))
    return build


def test_defaults_work_dir_from_config_name_and_no_resume(monkeypatch, train_cfg):
    for name in ('WORLD_SIZE', 'LOCAL_RANK', 'RANK'):
        monkeypatch.delenv(name, raising=False)
    cfg = train_cfg()
    assert Path(cfg.work_dir) == Path('work_dirs') / 'vit_lora_synthetic_cls'
    assert cfg.resume is False and cfg.load_from is None and cfg.launcher == 'none'
    assert cfg.train_dataloader.persistent_workers is False  # num_workers=0


def test_resume_auto_and_from_a_path(train_cfg):
    auto = train_cfg('--resume')
    assert auto.resume is True and auto.load_from is None
    path = train_cfg('--resume', 'work_dirs/x/epoch_3.pth')
    assert path.resume is True and path.load_from == 'work_dirs/x/epoch_3.pth'


def test_flags_and_cfg_options_applied_last(tmp_path, train_cfg):
    cfg = train_cfg('--work-dir', str(tmp_path), '--no-validate', '--auto-scale-lr', '--cfg-options',
                     f'work_dir={tmp_path / "override"}', 'train_cfg.max_epochs=3')
    assert cfg.work_dir == str(tmp_path / 'override') and cfg.train_cfg.max_epochs == 3
    assert cfg.val_cfg is None and cfg.val_dataloader is None and cfg.val_evaluator is None
    assert cfg.auto_scale_lr.enable is True


def test_torchrun_environment_selects_the_pytorch_launcher(monkeypatch, train_cfg):
    import opentad_lora.engine.runner_utils as runner_utils
    backends = []
    monkeypatch.setattr(runner_utils, 'init_cpu_process_group', backends.append)  # no real 2-process group here
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('LOCAL_RANK', '0')
    cfg = train_cfg()
    assert cfg.launcher == 'pytorch'
    assert cfg.env_cfg.dist_cfg.backend == 'gloo' and backends == ['gloo']  # this machine has no CUDA


def test_test_tool_sets_checkpoint_and_rejects_show_dir_without_hook(tmp_path, test_script):
    args = test_script.parse_args([str(CONFIG), 'ckpt.pth', '--work-dir', str(tmp_path)])
    cfg = test_script.merge_args(Config.fromfile(str(CONFIG)), args)
    assert cfg.load_from == 'ckpt.pth' and cfg.resume is False
    args = test_script.parse_args([str(CONFIG), 'ckpt.pth', '--show-dir', str(tmp_path)])
    with pytest.raises(SystemExit, match='visualization'):
        test_script.merge_args(Config.fromfile(str(CONFIG)), args)


def test_cuda_graph_flag_and_config_key_become_the_hook(train_cfg):
    def graph_hooks(cfg):
        return [hook for hook in cfg.custom_hooks if hook.type == 'opentad_lora.CUDAGraphHook']

    assert graph_hooks(train_cfg()) == []
    assert graph_hooks(train_cfg('--cuda-graph')) == [dict(type='opentad_lora.CUDAGraphHook')]
    cfg = train_cfg('--cfg-options', 'cuda_graph.modules=[backbone,neck]')
    assert graph_hooks(cfg) == [dict(type='opentad_lora.CUDAGraphHook', modules=['backbone', 'neck'])]
    assert 'cuda_graph' not in cfg
    with pytest.raises(ValueError, match='cuda_graph and compile are both set'):
        train_cfg('--compile', '--cuda-graph')
