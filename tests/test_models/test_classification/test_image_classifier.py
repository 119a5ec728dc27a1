"""ImageClassifier: the three forward modes, normalisation, LoRA freezing, and that training learns."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement

from opentad_lora.models.classification import ImageClassifier
from opentad_lora.peft import LoRALinear

BACKBONE = dict(type='VisionTransformer', img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4)
LORA = dict(r=4, alpha=8, targets=['qkv', 'attn.proj', 'fc1', 'fc2'], modules_to_save=['head'])
PREPROCESSOR = dict(type='ImgDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3)


def _classifier(**kwargs) -> ImageClassifier:
    return ImageClassifier(backbone=BACKBONE, num_classes=3, data_preprocessor=PREPROCESSOR, **kwargs)


def _batch(labels):
    inputs = [torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8) for _ in labels]
    samples = [BaseDataElement(gt_label=torch.tensor(label)) for label in labels]
    return dict(inputs=inputs, data_samples=samples)


def test_preprocessor_normalises_uint8_and_modes_agree():
    model = _classifier().eval()
    batch = _batch([0, 2])
    data = model.data_preprocessor(batch)
    expected = (torch.stack(batch['inputs']).float() - 127.5) / 127.5
    torch.testing.assert_close(data['inputs'], expected)
    logits = model(data['inputs'], mode='tensor')
    assert logits.shape == (2, 3)
    loss = model(**data, mode='loss')['loss']
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([0, 2])))
    preds = model(**data, mode='predict')
    torch.testing.assert_close(torch.stack([p.pred_score for p in preds]), logits.softmax(1))
    assert [int(p.pred_label) for p in preds] == logits.argmax(1).tolist()
    assert [int(p.gt_label) for p in preds] == [0, 2]
    with pytest.raises(ValueError, match='mode'):
        model(data['inputs'], mode='features')


def test_lora_wraps_targets_and_trains_only_lora_and_head():
    model = _classifier(lora=LORA)
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == {f'backbone.blocks.{b}.{leaf}' for b in range(2)
                       for leaf in ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if '.lora_' in n} | {'head.weight', 'head.bias'}
    assert any('.lora_A.' in n for n in trainable) and 'head.weight' in trainable
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if '.lora_' not in n)


def test_training_steps_reduce_the_loss_of_a_fixed_batch():
    torch.manual_seed(0)
    model = _classifier(lora=LORA)
    data = model.data_preprocessor(_batch([0, 1, 2, 0, 1, 2]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(10):
        loss = model(**data, mode='loss')['loss']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_in_channels_required_without_embed_dim():
    with pytest.raises(ValueError, match='in_channels'):
        ImageClassifier(backbone=dict(type='ImgDataPreprocessor'), num_classes=2)
