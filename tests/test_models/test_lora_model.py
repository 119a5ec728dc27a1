"""LoRAModel: pretrained base loaded before LoRA, only LoRA trains, output unchanged at init, transparent wrapper."""
import pytest
import torch
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.runner.checkpoint import _load_checkpoint_to_model
from torch import nn

from opentad_lora.engine import save_adapter_folder
from opentad_lora.models.lora_model import LoRAModel
from opentad_lora.registry import MODELS

LORA = dict(r=2, alpha=4, targets=['fc1', 'fc2'])


class TinyNet(BaseModel):
    """Two Linears + LayerNorm; ``init_weights`` re-draws every Linear (what many families do)."""

    feature_dim = 6

    def __init__(self, data_preprocessor=None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.fc1, self.norm, self.fc2 = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.constant_(module.weight, 0.5)

    def features(self, x):
        return self.norm(self.fc1(x))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.fc2(torch.relu(self.features(inputs)))


@pytest.fixture(autouse=True)
def _register_tiny_net():
    MODELS.register_module(name='LoRAModelTinyNet', module=TinyNet, force=True)
    yield
    MODELS.module_dict.pop('LoRAModelTinyNet', None)


@pytest.fixture
def pretrained(tmp_path):
    """A checkpoint of TinyNet written as a detector checkpoint would (under ``state_dict``, prefix ``backbone.``)."""
    torch.manual_seed(42)
    net = TinyNet()
    path = tmp_path / 'pretrained.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in net.state_dict().items()},
                'meta': {'epoch': 3}}, path)
    return net, path


def _build(**kwargs) -> LoRAModel:
    return MODELS.build(dict(type='LoRAModel', module=dict(type='LoRAModelTinyNet'), lora=LORA, **kwargs))


def test_pretrained_is_loaded_before_lora_and_output_is_unchanged(pretrained):
    net, path = pretrained
    model = _build(pretrained=str(path), pretrained_prefix='backbone')
    assert torch.equal(model.model.fc1.base_layer.weight, net.fc1.weight)
    assert torch.equal(model.model.norm.weight, net.norm.weight)
    x = torch.randn(5, 4)
    torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)  # B = 0 at init
    with torch.no_grad():
        model.model.fc2.lora_B['default'].weight.fill_(0.1)
    assert not torch.allclose(model(x), net(x))  # and the adapter is live


def test_only_lora_parameters_train(pretrained):
    model = _build(pretrained=str(pretrained[1]), pretrained_prefix='backbone')
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f'model.{layer}.lora_{ab}.default.weight' for layer in ('fc1', 'fc2') for ab in 'AB')
    assert model.lora_report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_init_weights_never_reinitialises(pretrained):
    net, path = pretrained
    model = _build(pretrained=str(path), pretrained_prefix='backbone')
    model.init_weights()
    assert torch.equal(model.model.fc1.base_layer.weight, net.fc1.weight)
    assert torch.all(model.model.fc1.lora_B['default'].weight == 0)


def test_without_pretrained_the_module_initialises_at_construction():
    model = _build()
    assert torch.all(model.model.fc1.base_layer.weight == 0.5)
    assert torch.all(model.model.fc1.lora_B['default'].weight == 0)  # LoRA init came after, untouched


def test_mismatching_pretrained_names_the_file_and_keys(pretrained, tmp_path):
    _, path = pretrained
    with pytest.raises(ValueError, match=r'pretrained\.pth does not match TinyNet: missing keys 6 \(fc1.weight'):
        _build(pretrained=str(path))  # keys still carry the backbone. prefix
    with pytest.raises(ValueError, match="no key starting with 'head.'"):
        _build(pretrained=str(path), pretrained_prefix='head')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        _build(pretrained=str(tmp_path / 'missing.pth'))


def test_attributes_fall_through_to_the_wrapped_module():
    model = _build(data_preprocessor=dict(type='BaseDataPreprocessor'))
    assert model.feature_dim == 6 and model.features(torch.randn(2, 4)).shape == (2, 6)
    assert isinstance(model.data_preprocessor, BaseDataPreprocessor)
    assert model.train_step.__self__ is model.model
    with pytest.raises(AttributeError):
        model.does_not_exist


def test_checkpoint_keys_survive_mmengine_loading_and_adapters_match_the_plain_module(tmp_path):
    model = _build()
    with torch.no_grad():
        model.model.fc1.lora_B['default'].weight.fill_(0.3)
    other = _build()
    # Runner.load_checkpoint strips a leading 'module.'; the wrapped module lives under 'model.' so nothing breaks.
    _load_checkpoint_to_model(other, {'state_dict': model.state_dict()}, strict=True,
                              revise_keys=[(r'^module.', '')])
    assert torch.equal(other.model.fc1.lora_B['default'].weight, model.model.fc1.lora_B['default'].weight)
    from safetensors.torch import load_file
    keys = set(load_file(str(save_adapter_folder(model, tmp_path / 'adapter') / 'adapter_model.safetensors')))
    assert 'base_model.model.fc1.lora_A.weight' in keys and not any('.model.model.' in k for k in keys)
