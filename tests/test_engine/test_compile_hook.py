"""CompileHook with inductor (C++ kernels on CPU): the compiled LoRA run trains like the eager one, only the loss
forward is compiled, and its checkpoint is an ordinary one that an eager model loads.

Inductor fuses and reorders float operations, so losses are compared with rtol 1e-4 (measured differences: ~1e-7).
"""
import numpy as np
import torch
import torch._inductor.config

from opentad_lora.engine import LoRACheckpointHook, load_checkpoint_file  # noqa: F401  (registers the hooks)

LOSS_RTOL = 1e-4


def _losses(runner) -> np.ndarray:
    return np.asarray(runner.message_hub.get_scalar('train/loss').data[0])


def test_inductor_compiled_lora_run_matches_eager_and_saves_eager_checkpoints(tmp_path, make_runner, toy_net):
    hooks = [dict(type='LoRACheckpointHook')]
    eager = make_runner(tmp_path / 'eager', custom_hooks=hooks, randomness=dict(seed=0))
    eager.train()

    torch._dynamo.reset()
    compiled = make_runner(tmp_path / 'compiled', custom_hooks=[*hooks, dict(type='CompileHook')],
                           randomness=dict(seed=0))
    with torch._inductor.config.patch(compile_threads=1):  # in process: no pool of compile workers to start
        compiled.train()
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1  # dynamo traced the loss forward
    assert 'forward' not in compiled.model.__dict__  # the eager forward is back after training

    assert len(_losses(compiled)) == 8 and _losses(compiled)[-1] < _losses(compiled)[0]
    np.testing.assert_allclose(_losses(compiled), _losses(eager), rtol=LOSS_RTOL, atol=0)

    # The compiled run's checkpoint has the eager model's keys and loads strictly into a fresh eager model.
    state = load_checkpoint_file(tmp_path / 'compiled' / 'epoch_2.pth')['state_dict']
    assert set(state) == set(load_checkpoint_file(tmp_path / 'eager' / 'epoch_2.pth')['state_dict'])
    fresh = make_runner(tmp_path / 'fresh', custom_hooks=[*hooks, dict(type='CheckpointMatchHook')])
    fresh.load_checkpoint(str(tmp_path / 'compiled' / 'epoch_2.pth'), strict=True)
    x = torch.randn(5, 2)
    fresh.model.eval()
    compiled.model.eval()
    torch.testing.assert_close(fresh.model(x), compiled.model(x))


def test_setup_compile_moves_the_config_option_into_the_hook():
    from opentad_lora.engine import setup_compile
    cfg = dict(compile=dict(backend='aot_eager', dynamic=True), custom_hooks=[dict(type='LoRACheckpointHook')])
    assert setup_compile(cfg) is True
    assert cfg['compile'] is False  # the Runner must not also compile train_step
    assert cfg['custom_hooks'][-1] == dict(type='opentad_lora.CompileHook', backend='aot_eager', dynamic=True)
    flag_only = dict(custom_hooks=[])
    assert setup_compile(flag_only, flag=True) is True
    assert flag_only['custom_hooks'] == [dict(type='opentad_lora.CompileHook')]
    plain = dict(custom_hooks=[])
    assert setup_compile(plain) is False and plain == dict(custom_hooks=[], compile=False)
