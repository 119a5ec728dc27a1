"""Resume on torch >= 2.6: 2 epochs straight == 1 epoch + resume, with LoRA-trimmed checkpoints."""
import pickle

import pytest
import torch
from mmengine.runner.checkpoint import load_from_local

from opentad_lora.engine import UnsafeCheckpointError, load_checkpoint_file
from opentad_lora.peft import trainable_state_dict


def _assert_same(a, b, path='') -> None:
    """Recursive equality; tensors must be bit-identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_same(a[key], b[key], f'{path}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{path}[{i}]')
    else:
        assert a == b, f'{path}: {a} != {b}'


def test_resume_equals_uninterrupted_training(tmp_path, make_runner):
    straight = make_runner(tmp_path / 'straight', max_epochs=2)
    initial_head = straight.model.head.weight.detach().clone()
    straight.train()

    first = make_runner(tmp_path / 'first', max_epochs=1)
    first.train()
    epoch_1 = tmp_path / 'first' / 'epoch_1.pth'
    resumed = make_runner(tmp_path / 'resumed', max_epochs=2, resume=True, load_from=str(epoch_1))
    resumed.train()

    assert resumed.epoch == straight.epoch == 2 and resumed.iter == straight.iter == 8
    _assert_same(straight.model.state_dict(), resumed.model.state_dict(), 'model')
    _assert_same(straight.optim_wrapper.state_dict(), resumed.optim_wrapper.state_dict(), 'optimizer')
    _assert_same([s.state_dict() for s in straight.param_schedulers],
                 [s.state_dict() for s in resumed.param_schedulers], 'schedulers')
    # Training moved the trainable weights, so the equality above is not about untouched tensors.
    assert not torch.equal(initial_head, straight.model.head.weight)


def _train_straight_and_resumed(tmp_path, make_runner, toy_net, hooks):
    runs = {}
    for name, epochs, extra in (('straight', 2, {}), ('first', 1, {}), ('resumed', 2, dict(
            resume=True, load_from=str(tmp_path / 'first' / 'epoch_1.pth')))):
        torch.manual_seed(0)
        runner = make_runner(tmp_path / name, max_epochs=epochs, model=toy_net(dropout=0.3), default_hooks=hooks,
                             val_dataloader=None, **extra)
        runner.train()
        runs[name] = runner
    return runs['straight'].model.state_dict(), runs['resumed'].model.state_dict()


def test_resume_with_lora_dropout_is_exact_with_the_epoch_seed_hook(tmp_path, make_runner, toy_net):
    """Dropout draws differ after a plain resume (no RNG state in checkpoints); EpochSeedHook makes them equal."""
    hooks = dict(logger=dict(type='LoggerHook', interval=1), checkpoint=dict(type='CheckpointHook', interval=1))
    straight, resumed = _train_straight_and_resumed(tmp_path / 'plain', make_runner, toy_net, hooks)
    assert not all(torch.equal(straight[k], resumed[k]) for k in straight)  # the control: masks differ
    hooks['epoch_seed'] = dict(type='EpochSeedHook')
    straight, resumed = _train_straight_and_resumed(tmp_path / 'seeded', make_runner, toy_net, hooks)
    _assert_same(straight, resumed, 'model')


def test_checkpoint_holds_trainable_tensors_and_training_state(tmp_path, make_runner):
    runner = make_runner(tmp_path, max_epochs=1)
    runner.train()
    checkpoint = load_checkpoint_file(tmp_path / 'epoch_1.pth')
    expected = set(trainable_state_dict(runner.model))
    assert set(checkpoint['state_dict']) == expected
    assert any('lora_A' in k for k in expected) and any(k.endswith('running_mean') for k in expected)
    assert not any('base_layer' in k for k in checkpoint['state_dict'])
    assert checkpoint['meta']['lora_trainable_only'] is True
    assert {'optimizer', 'param_schedulers', 'message_hub'} <= set(checkpoint)
    # A strict load into a freshly built model passes: the frozen base comes from construction.
    runner.load_checkpoint(str(tmp_path / 'epoch_1.pth'), strict=True)
    # MMEngine 0.10.7's own local loader cannot read its own checkpoint on torch >= 2.6 (what we fix).
    with pytest.raises(pickle.UnpicklingError):
        load_from_local(str(tmp_path / 'epoch_1.pth'), 'cpu')


def test_trimmed_checkpoint_missing_a_trainable_tensor_still_fails_strict_load(tmp_path, make_runner):
    runner = make_runner(tmp_path, max_epochs=1)
    runner.train()
    checkpoint = load_checkpoint_file(tmp_path / 'epoch_1.pth')
    del checkpoint['state_dict']['head.weight']
    torch.save(checkpoint, tmp_path / 'broken.pth')
    with pytest.raises(RuntimeError, match='head.weight'):
        runner.load_checkpoint(str(tmp_path / 'broken.pth'), strict=True)


class _Payload:
    """Pickles as ``exec(<write marker file>)``: what a malicious checkpoint does."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").write("pwned")',)


@pytest.mark.parametrize('fmt', ['torch_zip', 'raw_pickle'])
def test_malicious_checkpoint_is_refused_without_running(tmp_path, make_runner, fmt):
    marker = tmp_path / 'marker.txt'
    path = tmp_path / 'evil.pth'
    payload = {'state_dict': {'head.weight': torch.zeros(1, 8)}, 'meta': _Payload(marker)}
    if fmt == 'torch_zip':
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    runner = make_runner(tmp_path / 'work')
    with pytest.raises(UnsafeCheckpointError, match='builtins.exec') as err:
        runner.load_checkpoint(str(path))
    assert str(path) in str(err.value)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint_file(path)
    assert not marker.exists()
    # The payload is live: a full unpickle (what weights_only=False would do) runs it.
    torch.load(path, weights_only=False) if fmt == 'torch_zip' else pickle.loads(path.read_bytes())
    assert marker.read_text() == 'pwned'
