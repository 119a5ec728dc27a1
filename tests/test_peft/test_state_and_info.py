"""Adapter files: errors name the file; info counts match the architecture."""
import copy

import pytest
import torch
from torch import nn

from opentad_lora.peft import apply_lora, get_lora_info, load_adapter, print_lora_info, save_adapter


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))


def test_missing_and_corrupt_adapter_files_are_named(tmp_path):
    model = _mlp()
    apply_lora(model, dict(r=2, targets=['0', '2']))
    with pytest.raises(FileNotFoundError, match='adapter_model.safetensors'):
        load_adapter(copy.deepcopy(model), tmp_path / 'nowhere')
    save_adapter(model, tmp_path / 'a')
    weights = tmp_path / 'a' / 'adapter_model.safetensors'
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ValueError, match=str(weights)):
        load_adapter(_mlp(), tmp_path / 'a')


def test_adapter_of_another_architecture_is_refused_with_the_keys(tmp_path):
    model = _mlp()
    apply_lora(model, dict(r=2, targets=['0', '2']))
    save_adapter(model, tmp_path)
    other = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4), nn.Linear(4, 4))
    apply_lora(other, dict(r=2, targets=['0', '2', '3']))
    with pytest.raises(ValueError, match=r'missing keys \[.base_model\.model\.3\.lora_A\.weight'):
        load_adapter(other, tmp_path)
    wider = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4))
    with pytest.raises(ValueError, match='shape'):
        load_adapter(wider, tmp_path)


def test_save_writes_atomically_and_leaves_no_temporary_files(tmp_path):
    model = _mlp()
    apply_lora(model, dict(r=2, targets=['0']))
    save_adapter(model, tmp_path)
    save_adapter(model, tmp_path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ['adapter_config.json', 'adapter_model.safetensors']


def test_info_counts_and_table():
    model = _mlp()
    apply_lora(model, dict(r=2, targets=['0', '2'], modules_to_save=['2']))
    info = get_lora_info(model)
    lora = (8 * 2 + 2 * 16) + (16 * 2 + 2 * 4)
    assert info['total'] == 8 * 16 + 16 + 16 * 4 + 4 + lora
    assert info['trainable'] == lora + 16 * 4 + 4  # the '2' layer is also trained in full (modules_to_save)
    assert [row['name'] for row in info['rows']] == ['0', '2'] and info['rows'][0]['shape'] == (16, 8)
    lines = []
    text = print_lora_info(model, print_fn=lines.append)
    assert lines == [text] and f"trainable params: {info['trainable']:,}" in text
    torch.testing.assert_close(torch.tensor(info['percent']), torch.tensor(100 * info['trainable'] / info['total']))


def test_modules_marked_after_apply_lora_travel_with_the_adapter(tmp_path):
    """A family's own trained modules (adapters, a detector head) are saved and restored with the adapter file."""
    from opentad_lora.peft import mark_modules_to_save

    model = nn.Sequential()
    model.add_module('body', _mlp())
    model.add_module('head', nn.Linear(4, 3))
    apply_lora(model.body, dict(r=2, targets=['0']))
    with pytest.raises(ValueError, match="'heads' matches no module"):
        mark_modules_to_save(model, ['heads'])
    assert mark_modules_to_save(model, ['head']) == ['head']
    assert all(p.requires_grad for p in model.head.parameters())
    with torch.no_grad():
        model.head.weight.add_(1.0)
        model.body[0].lora_B['default'].weight.normal_()
    save_adapter(model, tmp_path)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for param in fresh.parameters():
            if param.requires_grad:
                param.zero_()
    load_adapter(fresh, tmp_path)
    x = torch.randn(2, 8)
    torch.testing.assert_close(fresh(x), model(x))
