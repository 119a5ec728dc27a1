"""TrainableEMAHook: OpenTAD's EMA of the trainable tensors, in checkpoints, on resume and with a 4-bit base."""
from collections import OrderedDict

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from safetensors.torch import load_file
from torch import nn

from opentad_lora.engine import TrainableEMAHook, ema_weights, load_checkpoint_file
from opentad_lora.peft import apply_lora, trainable_state_dict

MOMENTUM = 0.2  # large, so that a wrong start or order shows in the numbers


class RecordTrainable(Hook):
    """Keeps the trainable weights before training and after every optimizer step."""

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self.steps = []

    def _record(self, runner) -> None:
        self.steps.append({n: p.detach().clone().double() for n, p in runner.model.named_parameters()
                           if p.requires_grad})

    def before_train(self, runner) -> None:
        self._record(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._record(runner)


def ema_hook(runner) -> TrainableEMAHook:
    return next(h for h in runner.hooks if isinstance(h, TrainableEMAHook))


def ema_config(**kwargs) -> dict:
    return dict(type='TrainableEMAHook', momentum=MOMENTUM, **kwargs)


def test_average_equals_opentads_formula_on_trainable_tensors_only(tmp_path, make_runner):
    recorder = RecordTrainable()
    runner = make_runner(tmp_path, max_epochs=2, custom_hooks=[dict(type='LoRACheckpointHook'), ema_config(),
                                                               recorder])
    runner.train()
    # OpenTAD's ModelEma: e_0 = initial weights, e_t = 0.999 e_{t-1} + 0.001 w_t (here 1 - MOMENTUM) per step.
    expected = dict(recorder.steps[0])
    for weights in recorder.steps[1:]:
        expected = {n: (1 - MOMENTUM) * expected[n] + MOMENTUM * weights[n] for n in expected}
    averaged = dict(ema_hook(runner).ema_model.module.named_parameters())
    assert set(averaged) == set(expected) and len(recorder.steps) == 9
    assert not any('base_layer' in n for n in averaged)  # frozen tensors are not copied
    for name, value in averaged.items():
        torch.testing.assert_close(value.double(), expected[name], rtol=1e-6, atol=1e-7)
        assert not torch.allclose(value.double(), recorder.steps[-1][name])  # the average is not the last weights

    # Checkpoints hold the average as `state_dict` (what tools/test.py evaluates) and the raw weights aside.
    checkpoint = load_checkpoint_file(tmp_path / 'epoch_2.pth')
    assert set(checkpoint['state_dict']) == set(trainable_state_dict(runner.model))
    for name, value in averaged.items():
        assert torch.equal(checkpoint['state_dict'][name], value)
        assert torch.equal(checkpoint['ema_state_dict'][f'module.{name}'].double(), recorder.steps[-1][name])
    # Validation and exported adapters see the average; afterwards the raw weights are back, bit for bit.
    raw = {n: p.detach().clone() for n, p in runner.model.named_parameters()}
    average = {n: p.detach().clone() for n, p in averaged.items()}
    with ema_weights(runner):  # what before_val_epoch / before_test_epoch do too (MMEngine's swap)
        assert all(torch.equal(dict(runner.model.named_parameters())[n], v) for n, v in average.items())
    assert all(torch.equal(p, raw[n]) for n, p in runner.model.named_parameters())


def test_resume_with_ema_equals_uninterrupted_training(tmp_path, make_runner):
    runs = {}
    for name, epochs, extra in (('straight', 2, {}), ('first', 1, {}), ('resumed', 2, dict(
            resume=True, load_from=str(tmp_path / 'first' / 'epoch_1.pth')))):
        runner = make_runner(tmp_path / name, max_epochs=epochs,
                             custom_hooks=[dict(type='LoRACheckpointHook'), ema_config()], **extra)
        runner.train()
        runs[name] = runner
    straight, resumed = runs['straight'], runs['resumed']
    for a, b in ((straight.model.state_dict(), resumed.model.state_dict()),
                 (ema_hook(straight).ema_model.state_dict(), ema_hook(resumed).ema_model.state_dict())):
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    want, got = (load_checkpoint_file(tmp_path / run / 'epoch_2.pth') for run in ('straight', 'resumed'))
    for key in ('state_dict', 'ema_state_dict'):
        assert all(torch.equal(want[key][k], got[key][k]) for k in want[key])
    # The control: an average restarted from the resumed weights would differ.
    first = ema_hook(runs['first']).ema_model.module.state_dict()
    assert any(not torch.equal(first[k], ema_hook(resumed).ema_model.module.state_dict()[k]) for k in first)


class QLoRANet(BaseModel):
    """A trainable input layer, a 4-bit NF4 frozen Linear with LoRA, a trainable head; regression loss."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(inp=nn.Linear(2, 64), act=nn.GELU(), fc=nn.Linear(64, 64)))
        self.head = nn.Linear(64, 1)
        apply_lora(self, dict(r=4, alpha=8, targets=['fc'], quantize_bits=4, modules_to_save=['inp', 'head']))

    def init_weights(self) -> None:
        """Built initialised (as TADDetector): MMEngine's generic init cannot read packed 4-bit tensors."""

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        out = self.head(self.body(torch.stack(inputs))).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((out - torch.stack(data_samples)) ** 2).mean())
        return out


def test_qlora_model_trains_and_saves_with_ema_without_touching_the_4bit_base(tmp_path, make_runner):
    torch.manual_seed(0)
    model = QLoRANet()
    packed = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == torch.uint8}
    assert packed  # the base weight is stored as packed 4-bit
    runner = make_runner(tmp_path, max_epochs=1, model=model,
                         custom_hooks=[dict(type='LoRACheckpointHook', save_final=True), ema_config()])
    runner.train()
    averaged = dict(ema_hook(runner).ema_model.module.named_parameters())
    assert set(averaged) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in averaged.values())
    assert all(torch.equal(dict(model.named_parameters())[n], p) for n, p in packed.items())
    checkpoint = load_checkpoint_file(tmp_path / 'epoch_1.pth')
    assert not any(k.endswith('base_layer.weight') for k in checkpoint['state_dict'])
    assert {k.removeprefix('module.') for k in checkpoint['ema_state_dict'] if k != 'steps'} == set(averaged)
    exported = load_file(tmp_path / 'final_lora_weights' / 'adapter_model.safetensors')
    lora_a = exported['base_model.model.body.fc.lora_A.weight']
    assert torch.equal(lora_a, averaged['body.fc.lora_A.default.weight'])  # the adapter folder holds the average
    # A test run (tools/test.py: before_run, load, before_test_epoch) on a fresh QLoRA model evaluates the average.
    torch.manual_seed(0)
    fresh = make_runner(tmp_path / 'test', max_epochs=1, model=QLoRANet(),
                        custom_hooks=[dict(type='LoRACheckpointHook'), ema_config()])
    fresh.call_hook('before_run')
    fresh.load_checkpoint(str(tmp_path / 'epoch_1.pth'), strict=True)
    fresh.call_hook('before_test_epoch')
    assert all(torch.equal(dict(fresh.model.named_parameters())[n], p) for n, p in averaged.items())


def test_update_buffers_is_refused():
    with pytest.raises(ValueError, match='update_buffers'):
        TrainableEMAHook(update_buffers=True)


def test_resuming_a_checkpoint_without_an_average_starts_one_from_the_resumed_weights(tmp_path, make_runner):
    make_runner(tmp_path / 'plain', max_epochs=1).train()  # trained without EMA: no ema_state_dict
    recorder = RecordTrainable()
    resumed = make_runner(tmp_path / 'resumed', max_epochs=2, resume=True,
                          load_from=str(tmp_path / 'plain' / 'epoch_1.pth'),
                          custom_hooks=[dict(type='LoRACheckpointHook'), ema_config(), recorder])
    resumed.train()
    expected = dict(recorder.steps[0])  # the weights as resumed
    for weights in recorder.steps[1:]:
        expected = {n: (1 - MOMENTUM) * expected[n] + MOMENTUM * weights[n] for n in expected}
    for name, value in ema_hook(resumed).ema_model.module.named_parameters():
        torch.testing.assert_close(value.double(), expected[name], rtol=1e-6, atol=1e-7)
