"""CLIPClassifier: prompt-ensemble zero-shot logits, CE training of both towers' LoRA, the text cache, and the
synthetic config through tools/train.py and tools/test.py."""
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement

from opentad_lora.datasets.clip import write_synthetic_clip_data
from opentad_lora.models.clip import CLIPClassifier, CLIPTokenizer, get_parameters, set_parameters

REPO = Path(__file__).resolve().parents[3]
QKV = ['q_proj', 'k_proj', 'v_proj']
NAMES = ['red horizontal stripes', 'green vertical stripes', 'cyan checker stripes']
TEMPLATES = ['a photo of {}.', 'a blurry photo of {}.']


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('synthetic_clip')
    info = write_synthetic_clip_data(root, num_classes=4, train_per_class=16, val_per_class=8,
                                     templates=('a photo of {}.', 'a blurry photo of {}.'))
    return dict(info, root=root)


def classifier(bpe_path: str, **kwargs) -> CLIPClassifier:
    clip = dict(type='ViTLoRA', arch=dict(base='tiny', text=dict(vocab_size=1024)),
                lora=dict(r=2, alpha=4, seed=0, vision=dict(target_modules=QKV), text=dict(target_modules=QKV)))
    return CLIPClassifier(clip, NAMES, TEMPLATES, tokenizer=dict(bpe_path=bpe_path), **kwargs)


def test_logits_are_scaled_cosines_to_template_mean_class_embeddings(data):
    model = classifier(data['bpe_path'], logit_scale=None).eval()
    images = torch.randn(5, 3, 32, 32)
    tok = CLIPTokenizer(data['bpe_path'], context_length=16)
    with torch.no_grad():
        logits = model(images)
        texts = [[F.normalize(model.clip.encode_text(tok(t.format(n))), dim=-1)[0] for t in TEMPLATES] for n in NAMES]
        classes = F.normalize(torch.stack([torch.stack(t).mean(0) for t in texts]), dim=-1)
        expected = model.clip.logit_scale.exp() * F.normalize(model.clip.encode_image(images), dim=-1) @ classes.t()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    samples = model(images, [BaseDataElement(gt_label=torch.tensor(1)) for _ in range(5)], mode='predict')
    torch.testing.assert_close(torch.stack([s.pred_score for s in samples]), logits.softmax(1))
    assert [int(s.pred_label) for s in samples] == logits.argmax(1).tolist()


def test_cross_entropy_training_moves_only_lora_of_both_towers(data):
    model = classifier(data['bpe_path'], logit_scale=100.0).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images = torch.randn(6, 3, 32, 32)
    samples = [BaseDataElement(gt_label=torch.tensor(i % 3)) for i in range(6)]
    losses = []
    for _ in range(15):
        loss = model(images, samples, mode='loss')['loss']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    lora_b = {n: p for n, p in model.named_parameters() if '.lora_B.' in n}
    assert all(p.abs().sum() > 0 for p in lora_b.values())  # both towers' B moved from zero
    assert any(n.startswith('clip.text_model') for n in lora_b)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_text_embeddings_are_cached_in_eval_until_a_text_weight_changes(data):
    model = classifier(data['bpe_path']).eval()
    with torch.no_grad():
        first = model.class_embeddings()
        assert model.class_embeddings() is first
        params = get_parameters(model)
        params = [p + 0.05 if i % 2 else p for i, p in enumerate(params)]  # changes every B (vision and text)
        set_parameters(model, params)
        second = model.class_embeddings()
    assert second is not first and not torch.allclose(second, first)
    with torch.enable_grad():
        assert model.class_embeddings().requires_grad  # never served from the cache when gradients flow


def test_bad_prompts_and_vocabularies_are_reported(data, tmp_path):
    with pytest.raises(ValueError, match='exactly one'):
        classifier(data['bpe_path']).__class__(dict(type='ViTLoRA', arch='tiny'), NAMES, ['no slot'],
                                               tokenizer=dict(bpe_path=data['bpe_path']))
    with pytest.raises(ValueError, match='set the arch text vocab_size to 1024'):
        CLIPClassifier(dict(type='ViTLoRA', arch='tiny'), NAMES, tokenizer=dict(bpe_path=data['bpe_path']))


def load_tool(relative: str) -> ModuleType:
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f'clip_tool_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_config_learns_through_train_and_test_tools(data, tmp_path):
    """OpenAI-layout stand-in weights -> tools/train.py (16-shot LoRA on both towers) -> tools/test.py on the trimmed
    checkpoint: far above chance (25 %), and the test run reproduces the final validation exactly."""
    root = data['root']
    load_tool('tools/data/make_synthetic_clip.py').write_pretrained_clip(
        dict(base='tiny', text=dict(vocab_size=1024)), root / 'pretrained_clip_openai.pth', seed=0)
    options = {'model.clip.pretrained': root / 'pretrained_clip_openai.pth', 'model.tokenizer.bpe_path':
               data['bpe_path'], 'train_dataloader.dataset.data_root': root / 'train',
               'val_dataloader.dataset.data_root': root / 'val', 'test_dataloader.dataset.data_root': root / 'val',
               'default_hooks.checkpoint.interval': 8, 'train_cfg.val_interval': 8}
    cli = ['--cfg-options', *(f'{k}={v}' for k, v in options.items()),
           'model.class_names=[' + ','.join(f'"{n}"' for n in data['class_names']) + ']']
    config = str(REPO / 'configs' / 'clip' / 'clip_tiny_lora_synthetic.py')
    load_tool('tools/train.py').main([config, '--work-dir', str(tmp_path / 'work'), *cli,
                                      'experiment_name=clip_train'])
    (scalars, ) = (tmp_path / 'work').glob('*/vis_data/scalars.json')
    val_top1 = [json.loads(line) for line in scalars.read_text().splitlines() if 'accuracy/top1' in line][-1]
    tested = load_tool('tools/test.py').main([config, str(tmp_path / 'work' / 'epoch_8.pth'), '--work-dir',
                                              str(tmp_path / 'test'), *cli, 'experiment_name=clip_test'])
    assert tested['accuracy/top1'] >= 75.0
    assert tested['accuracy/top1'] == val_top1['accuracy/top1']
    assert tested['accuracy/top5'] == 100.0  # 4 classes: the top 5 hold every label
    assert (tmp_path / 'work' / 'final_lora_weights' / 'adapter_model.safetensors').is_file()
