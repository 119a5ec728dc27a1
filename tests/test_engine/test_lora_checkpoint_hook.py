"""LoRACheckpointHook: trimmed checkpoints, adapter step/final folders, merged export."""
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from opentad_lora.engine import LoRACheckpointHook, load_checkpoint_file, merged_state_dict
from opentad_lora.peft import apply_lora, iter_lora_layers, load_adapter, lora_state_dict


def _randomize_lora(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter non-zero A and B so merges and exports carry real numbers."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in iter_lora_layers(model):
            for weight in (layer.lora_A['default'].weight, layer.lora_B['default'].weight):
                weight.copy_(torch.randn(weight.shape, generator=generator))


def _runner(model: nn.Module, work_dir, it: int = 0) -> SimpleNamespace:
    return SimpleNamespace(model=model, work_dir=str(work_dir), iter=it)


def test_before_save_checkpoint_keeps_trainable_tensors_and_buffers(tmp_path, toy_net):
    model = toy_net()
    state = model.state_dict()
    state._metadata = getattr(state, '_metadata', OrderedDict())
    checkpoint = dict(meta={}, state_dict=state)
    LoRACheckpointHook().before_save_checkpoint(_runner(model, tmp_path), checkpoint)
    kept = set(checkpoint['state_dict'])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert kept == trainable | {n for n, _ in model.named_buffers()}
    assert 'backbone.fc1.base_layer.weight' not in kept and 'backbone.bn.running_var' in kept
    assert checkpoint['meta']['lora_trainable_only'] is True and hasattr(checkpoint['state_dict'], '_metadata')


@pytest.mark.parametrize('case', ['trainable_only=False', 'no LoRA'])
def test_before_save_checkpoint_keeps_everything_otherwise(tmp_path, toy_net, case):
    model = toy_net(lora=case != 'no LoRA')
    checkpoint = dict(meta={}, state_dict=model.state_dict())
    LoRACheckpointHook(trainable_only=case != 'trainable_only=False').before_save_checkpoint(
        _runner(model, tmp_path), checkpoint)
    assert set(checkpoint['state_dict']) == set(model.state_dict()) and 'lora_trainable_only' not in checkpoint['meta']


def test_after_load_checkpoint_silences_only_frozen_missing_keys(tmp_path, toy_net):
    source = toy_net()
    _randomize_lora(source)
    checkpoint = dict(meta={}, state_dict=source.state_dict())
    hook = LoRACheckpointHook()
    hook.before_save_checkpoint(_runner(source, tmp_path), checkpoint)
    target = toy_net()
    hook.after_load_checkpoint(_runner(target, tmp_path), checkpoint)
    target.load_state_dict(checkpoint['state_dict'], strict=True)  # raises if frozen keys were reported missing
    assert torch.equal(target.backbone.fc1.lora_B['default'].weight, source.backbone.fc1.lora_B['default'].weight)
    hook.after_load_checkpoint(_runner(target, tmp_path), checkpoint)
    del checkpoint['state_dict']['head.weight']
    with pytest.raises(RuntimeError, match='head.weight'):
        target.load_state_dict(checkpoint['state_dict'], strict=True)


def test_adapter_step_folders_with_max_keep(tmp_path, toy_net):
    model = toy_net()
    hook = LoRACheckpointHook(interval=3, max_keep=2, save_final=False)
    for it in range(10):
        _randomize_lora(model, seed=it)
        hook.after_train_iter(_runner(model, tmp_path, it), batch_idx=it)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['lora_weights_step_000006', 'lora_weights_step_000009']
    restored = toy_net()
    load_adapter(restored, tmp_path / 'lora_weights_step_000009')
    _randomize_lora(model, seed=8)  # the state the step-9 save saw
    for key, value in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(restored)[key], value), key


def test_final_adapter_and_merged_model(tmp_path, toy_net):
    torch.manual_seed(0)
    model = toy_net().eval()
    _randomize_lora(model)
    x = torch.randn(5, 2)
    expected = model(x).detach()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    LoRACheckpointHook(save_merged=True).after_train(_runner(model, tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {'final_lora_weights', 'merged_model'}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # training weights untouched
    plain = toy_net(lora=False).eval()
    plain.load_state_dict(load_checkpoint_file(tmp_path / 'merged_model' / 'model.pth'), strict=True)
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    restored = toy_net().eval()  # same base weights (the pretrained base), fresh adapters
    load_adapter(restored, tmp_path / 'final_lora_weights')
    torch.testing.assert_close(restored(x), expected, rtol=0, atol=0)


class TwoPart(nn.Module):
    """LoRA applied separately to ``encoder`` and ``decoder`` (like backbone + head of a family)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
        self.decoder = nn.Sequential(nn.Linear(4, 3))
        apply_lora(self.encoder, dict(r=2, targets=['0', '2']))
        apply_lora(self.decoder, dict(r=1, alpha=2, targets=['0']))

    def forward(self, x):
        return self.decoder(self.encoder(x))


def test_several_lora_submodules_export_relative_to_the_full_model(tmp_path):
    torch.manual_seed(0)
    model = TwoPart()
    _randomize_lora(model)
    LoRACheckpointHook().after_train(_runner(model, tmp_path))
    torch.manual_seed(0)
    restored = TwoPart()
    load_adapter(restored, tmp_path / 'final_lora_weights')
    x = torch.randn(2, 4)
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    assert {k.split('.')[2] for k in lora_state_dict(model)} == {'encoder', 'decoder'}


def test_merged_export_of_a_4bit_model_is_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    apply_lora(model, dict(r=4, targets=['0', '2'], quantize_bits=4))
    _randomize_lora(model)
    x = torch.randn(3, 64)
    state = merged_state_dict(model)
    plain = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    plain.load_state_dict(state, strict=True)
    assert all(v.dtype == torch.float32 for v in state.values())
    torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-4)
    assert type(model[0]).__name__ == 'LoRALinear'  # the training model keeps its LoRA layers


def test_a_model_with_its_own_merged_format_writes_it(tmp_path):
    """save_merged defers to ``model.export_merged(out_dir)`` when the model has one (CAD-Recode's HF layout)."""

    class OwnFormat(nn.Sequential):
        def export_merged(self, out_dir):
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / 'config.json').write_text('{}')
            return out_dir

    model = OwnFormat(nn.Linear(4, 4))
    apply_lora(model, dict(r=2, targets=['0']))
    LoRACheckpointHook(save_final=False, save_merged=True).after_train(_runner(model, tmp_path))
    assert (tmp_path / 'merged_model' / 'config.json').is_file()
    assert not (tmp_path / 'merged_model' / 'model.pth').exists()
