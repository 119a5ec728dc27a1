"""CheckpointMatchHook: a checkpoint of another model is refused, naming what differs, before anything is loaded."""
import pytest
import torch
from mmengine.hooks import Hook

from opentad_lora.engine import (CheckpointMatchHook, CheckpointMismatchError, check_checkpoint_matches,
                                 load_checkpoint_file)
from opentad_lora.peft import apply_lora


@pytest.fixture
def lora_checkpoint(tmp_path, make_runner):
    """A trimmed LoRA checkpoint of the toy network after one epoch."""
    make_runner(tmp_path / 'trained', max_epochs=1).train()
    return tmp_path / 'trained' / 'epoch_1.pth'


def test_checkpoint_of_the_same_config_loads(tmp_path, make_runner, lora_checkpoint):
    runner = make_runner(tmp_path / 'same', custom_hooks=[dict(type='LoRACheckpointHook'),
                                                          dict(type='CheckpointMatchHook')])
    runner.load_checkpoint(str(lora_checkpoint))  # strict or not, nothing is left out: no error
    trained = load_checkpoint_file(lora_checkpoint)['state_dict']
    assert torch.equal(runner.model.head.weight, trained['head.weight'])


def _error(model, checkpoint) -> str:
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_matches(model, checkpoint, 'work/epoch_1.pth', 'configs/other.py')
    message = str(info.value)
    assert 'work/epoch_1.pth' in message and 'configs/other.py' in message
    return message


def test_other_rank_other_targets_and_full_model_are_refused(lora_checkpoint, toy_net):
    checkpoint = load_checkpoint_file(lora_checkpoint)

    torch.manual_seed(0)
    other_rank = toy_net(lora=False)
    apply_lora(other_rank, dict(r=4, alpha=4, targets=['fc1', 'fc2'], modules_to_save=['norm', 'head']))
    message = _error(other_rank, checkpoint)
    assert '4 tensors differ in shape' in message and 'backbone.fc1.lora_A.default.weight [file 2x2, model 4x2]' \
        in message

    one_target = toy_net(lora=False)
    apply_lora(one_target, dict(r=2, alpha=4, targets=['fc1'], modules_to_save=['norm', 'head']))
    message = _error(one_target, checkpoint)
    assert '2 tensors of the file are not trainable tensors and buffers of the model' in message
    assert 'backbone.fc2.lora_A.default.weight' in message

    full = toy_net(lora=False)  # a plain model: all its parameters are trainable, so the file lacks most
    message = _error(full, checkpoint)
    assert 'of the model are not in the file' in message and 'backbone.fc1.weight' in message


def test_full_checkpoint_must_hold_the_whole_state_dict(toy_net):
    model = toy_net(lora=False)
    state = model.state_dict()
    check_checkpoint_matches(model, dict(state_dict={f'module.{k}': v for k, v in state.items()}), 'f', 'c')
    check_checkpoint_matches(model, dict(state), 'f', 'c')  # a bare state dict
    del state['head.bias']
    assert '1 tensors of the model are not in the file (head.bias)' in _error(model, dict(state_dict=state))


class RenameOldLayout(Hook):
    """A converter as the check expects one: an earlier after_load_checkpoint hook rewriting the keys in place."""

    priority = 'HIGH'

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        checkpoint['state_dict'] = {k.replace('old_head.', 'head.'): v for k, v in checkpoint['state_dict'].items()}


def test_a_converter_hook_runs_before_the_check(tmp_path, make_runner, lora_checkpoint):
    checkpoint = load_checkpoint_file(lora_checkpoint)
    checkpoint['state_dict'] = {k.replace('head.', 'old_head.'): v for k, v in checkpoint['state_dict'].items()}
    old_layout = tmp_path / 'old_layout.pth'
    torch.save(checkpoint, old_layout)
    hooks = [dict(type='LoRACheckpointHook'), dict(type='CheckpointMatchHook')]
    with pytest.raises(CheckpointMismatchError, match='old_head.bias'):
        make_runner(tmp_path / 'plain', custom_hooks=hooks).load_checkpoint(str(old_layout))
    runner = make_runner(tmp_path / 'converted', custom_hooks=[*hooks, RenameOldLayout()])
    runner.load_checkpoint(str(old_layout))
    assert torch.equal(runner.model.head.weight, checkpoint['state_dict']['old_head.weight'])


def test_resume_with_other_optimizer_groups_is_refused_before_any_step(tmp_path, make_runner, lora_checkpoint,
                                                                      toy_net):
    hooks = [dict(type='LoRACheckpointHook'), dict(type='CheckpointMatchHook', check_load_from=False)]
    optim = dict(constructor='LoRAOptimWrapperConstructor', optimizer=dict(type='AdamW', lr=0.05),
                 paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=0.1)}))
    runner = make_runner(tmp_path / 'resumed', custom_hooks=hooks, optim_wrapper=optim, resume=True,
                         load_from=str(lora_checkpoint))
    head_before = runner.model.head.weight.detach().clone()
    with pytest.raises(CheckpointMismatchError, match=r'its optimizer has other parameter groups \(tensors per '
                                                      r'group in the file: optimizer: \[5, 3\]; this config: '
                                                      r'optimizer: \[4, 2, 1, 1\]\)'):
        runner.train()
    assert runner.iter == 0 and torch.equal(runner.model.head.weight, head_before)  # nothing loaded, no step
    # check_load_from=False: in training a plain load_from is an initialisation and is not checked.
    torch.manual_seed(0)
    other_rank = toy_net(lora=False)
    apply_lora(other_rank, dict(r=4, alpha=4, targets=['fc1', 'fc2'], modules_to_save=['norm', 'head']))
    make_runner(tmp_path / 'init', model=other_rank, custom_hooks=hooks).load_checkpoint(str(lora_checkpoint))


def test_the_tools_add_the_hook_once():
    from opentad_lora.engine import add_checkpoint_match_hook
    cfg = dict(custom_hooks=[dict(type='LoRACheckpointHook')])
    add_checkpoint_match_hook(cfg, check_load_from=True)
    add_checkpoint_match_hook(cfg, check_load_from=False)
    assert cfg['custom_hooks'] == [dict(type='LoRACheckpointHook'),
                                   dict(type='opentad_lora.CheckpointMatchHook', check_load_from=True)]
