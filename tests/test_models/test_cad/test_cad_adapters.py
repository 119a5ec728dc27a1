"""CAD-Recode adapters: merged export equals the adapter model, named adapters switch without reloading the base,
and tools/cad_infer.py finds out by itself whether a checkpoint is merged or an adapter."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from opentad_lora.datasets.cad import LoadCADPointCloud, write_points
from opentad_lora.engine.export import merged_state_dict
from opentad_lora.models.cad import CADRecodeLoRA

REPO_ROOT = Path(__file__).resolve().parents[3]


def perturb(model, seed):
    """Give every trainable tensor (LoRA A/B, point encoder) random values, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator).to(param.dtype))


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch['inputs'], batch['data_samples'], mode='tensor')


@pytest.mark.parametrize('quantized', [False, True], ids=['lora', 'qlora'])
def test_merged_model_equals_adapter_model(make_model, make_lora, cad_batch, tmp_path, quantized):
    extra = dict(quantize_bits=4, compute_dtype='bf16') if quantized else {}
    model = make_model(lora=make_lora(**extra))
    perturb(model, 0)
    expected = logits(model, cad_batch)
    out = model.export_merged(tmp_path / 'merged_model')
    with safe_open(str(out / 'model.safetensors'), framework='pt') as handle:
        keys = set(handle.keys())
    assert {'point_encoder.projection.weight', 'model.layers.1.mlp.down_proj.weight'} <= keys  # CAD-Recode layout
    assert not any('lora' in key or 'base_layer' in key for key in keys)
    merged = CADRecodeLoRA(llm=dict(pretrained=str(out)), tokenizer=str(out))
    assert merged.lora_report is None and not any('lora' in n for n, _ in merged.named_parameters())
    # Float LoRA: W + s*B@A in float32, equal up to float rounding. QLoRA: the merged weight is the dequantized
    # NF4 base (what the 4-bit forward multiplies with) + the update, so no quantization error enters; the bound
    # covers the bf16 adapter/compute path (measured on CPU: 5e-5 for logits of magnitude 7).
    tolerance = 1e-2 if quantized else 1e-3
    torch.testing.assert_close(logits(merged, cad_batch), expected, atol=tolerance, rtol=0)
    torch.testing.assert_close(logits(model, cad_batch), expected, atol=0, rtol=0)  # export left the model as is
    # The generic engine path (tools/merge_lora.py's merged_model.pth) loads into the same model without LoRA.
    plain = make_model()
    plain.load_state_dict(merged_state_dict(model), strict=True)
    torch.testing.assert_close(logits(plain, cad_batch), expected, atol=tolerance, rtol=0)


def test_adapters_switch_by_name_without_reloading_the_base(make_model, make_lora, cad_batch, tmp_path):
    trained = make_model(lora=make_lora())
    perturb(trained, 1)
    logits_a = logits(trained, cad_batch)
    trained.save_adapter(tmp_path / 'a')
    perturb(trained, 2)
    logits_b = logits(trained, cad_batch)
    trained.save_adapter(tmp_path / 'b')
    assert {p.name for p in (tmp_path / 'a').iterdir()} == {'adapter_config.json', 'adapter_model.safetensors',
                                                            'cad_recode.json', 'tokenizer.json',
                                                            'tokenizer_config.json'}  # seed 002: tokenizer kept
    model = make_model()  # the same seeded base, no LoRA yet
    base_weight = model.llm.model.layers[0].self_attn.q_proj.weight
    model.load_adapter(tmp_path / 'a', 'a')
    model.load_adapter(tmp_path / 'b', 'b')
    assert model.active_adapter == 'a'
    assert model.llm.model.layers[0].self_attn.q_proj.base_layer.weight is base_weight  # base not reloaded
    first_a = logits(model, cad_batch)
    torch.testing.assert_close(first_a, logits_a, atol=1e-6, rtol=0)
    model.set_adapter('b')
    switched = logits(model, cad_batch)
    torch.testing.assert_close(switched, logits_b, atol=1e-6, rtol=0)
    assert (switched - first_a).abs().max() > 0.1
    model.set_adapter('a')
    assert torch.equal(logits(model, cad_batch), first_a)  # switching back restores the outputs exactly


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cad_infer_detects_merged_and_adapter_checkpoints(make_model, make_lora, cad_data, cad_batch, tmp_path):
    model = make_model(lora=make_lora())
    perturb(model, 3)
    model.save_adapter(tmp_path / 'work' / 'final_lora_weights')
    model.export_merged(tmp_path / 'merged_only' / 'merged_model')
    points = [str(write_points(tmp_path / f'{i}.ply', p.numpy())) for i, p in enumerate(cad_batch['inputs'][:2])]
    loader = LoadCADPointCloud(num_points=32)  # the tool's preprocessing (fit to [-1, 1], furthest point order)
    expected = model.generate(torch.stack([torch.from_numpy(loader(dict(points_path=p))['points']) for p in points]),
                              6)
    cad_infer = load_tool('cad_infer')
    for checkpoint, kind in ((tmp_path / 'work', 'adapter'), (tmp_path / 'merged_only', 'merged'),
                             (tmp_path / 'merged_only' / 'merged_model', 'merged')):
        loaded, found = cad_infer.load_cad_model(str(checkpoint))
        assert found == kind
        torch.testing.assert_close(logits(loaded, cad_batch), logits(model, cad_batch), atol=1e-3, rtol=0)
    codes = cad_infer.main([str(tmp_path / 'work'), '--points', *points, '--num-points', '32',
                            '--max-new-tokens', '6', '--out-dir', str(tmp_path / 'out')])
    assert codes == expected and (tmp_path / 'out' / '0.py').read_text() == expected[0]
    sidecar = json.loads((tmp_path / 'work' / 'final_lora_weights' / 'cad_recode.json').read_text())
    assert sidecar['tokenizer'] == str(cad_data / 'tokenizer')
