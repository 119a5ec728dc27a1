"""Qwen3 (seed 002's Qwen3-1.7B-Base) and Qwen2-1.5B: the real-size configs wrap exactly the seed's projections with
the parameter counts written in their headers, and the tiny Qwen3 config, written by the data generator in the HF
layout, trains and decodes; the generator checks its requirements before writing anything."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from safetensors import safe_open

from opentad_lora.peft import apply_lora
from opentad_lora.registry import DATASETS, MODELS

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIGS = REPO_ROOT / 'configs' / 'cad_recode'
SEED_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
# The architectures of the real bases (their config.json), with tied embeddings; parameter counts of the LLM,
# of LoRA r=16 on the seven projections of the 28 layers (r * (in + out) each) and of the point encoder (51 -> width).
REAL_SIZES = {
    'qwen3-1.7b-base': (dict(model_type='qwen3', hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                             num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                             tie_word_embeddings=True),
                        1_720_574_976, 28 * 16 * (2 * 4096 + 2 * 3072 + 3 * 8192), 52 * 2048),
    'qwen2-1.5b': (dict(model_type='qwen2', hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
                   1_543_714_304, 28 * 16 * (2 * 3072 + 2 * 1792 + 3 * 10496), 52 * 1536),
}


@pytest.mark.parametrize('name', sorted(REAL_SIZES))
def test_real_size_configs_wrap_the_seeds_projections(name):
    import transformers

    lora_cfg = Config.fromfile(str(CONFIGS / f'cad_recode_{name}_lora_r16.py'))
    qlora_cfg = Config.fromfile(str(CONFIGS / f'cad_recode_{name}_qlora_r16.py'))
    lora = lora_cfg.model.lora.to_dict()
    assert (lora['r'], lora['alpha'], lora['dropout'], lora['targets']) == (16, 32, 0.1, SEED_TARGETS)  # seed 002
    assert qlora_cfg.model.lora.to_dict() == dict(lora, quantize_bits=4, quant_type='nf4', double_quant=True,
                                                  compute_dtype='bf16')
    for cfg in (lora_cfg, qlora_cfg):
        path = cfg.model.llm.pretrained
        assert path.lower() == f'checkpoints/{name}' and cfg.model.tokenizer == path
        assert cfg.train_dataloader.dataset.pipeline[3].tokenizer == path
        hook = next(h for h in cfg.custom_hooks if h['type'] == 'LoRACheckpointHook')
        assert hook['save_merged'] and cfg.model.save_tokenizer  # seed 002: merged_model/ + tokenizer kept
    fields, llm_params, lora_params, encoder_params = REAL_SIZES[name]
    fields = dict(fields)
    with torch.device('meta'):  # the real shapes, no memory
        llm = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**fields))
    assert sum(p.numel() for p in llm.parameters()) == llm_params
    report = apply_lora(llm, lora)
    expected = {f'model.layers.{i}.{block}.{proj}' for i in range(28)
                for block, projs in (('self_attn', SEED_TARGETS[:4]), ('mlp', SEED_TARGETS[4:])) for proj in projs}
    assert set(report.wrapped) == expected  # Qwen3's q_norm / k_norm (per-head RMSNorm) are not targets
    assert report.trainable == lora_params
    header = (CONFIGS / f'cad_recode_{name}_lora_r16.py').read_text().split('\n_base_')[0]
    assert f'{lora_params:,}' in header and f'{encoder_params:,}' in header  # the numbers in the config's header


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f'cad_llm_configs_{name.replace("/", "_")}', REPO_ROOT / 'tools' /
                                                  f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_qwen3_config_from_the_generator_overfits_and_decodes(tmp_path):
    config = str(CONFIGS / 'cad_recode_tiny_qwen3_lora_synthetic.py')
    data = tmp_path / 'data'
    load_tool('data/make_synthetic_cad').main(['--out', str(data), '--train', '4', '--val', '1', '--kinds', 'box',
                                               'cylinder', '--surface-points', '512', '--vocab-size', '400',
                                               '--config', config])
    llm_dir = data / 'tiny_qwen3'
    assert json.loads((llm_dir / 'config.json').read_text())['model_type'] == 'qwen3'
    with safe_open(str(llm_dir / 'model.safetensors'), framework='pt') as handle:
        assert 'model.layers.0.self_attn.q_norm.weight' in set(handle.keys())

    cfg = Config.fromfile(config)
    init_default_scope('opentad_lora')
    model_cfg = cfg.model.to_dict()
    model_cfg.update(llm=dict(model_cfg['llm'], pretrained=str(llm_dir)), tokenizer=str(llm_dir), max_new_tokens=40)
    model = MODELS.build(model_cfg)
    assert type(model.llm).__name__ == 'Qwen3ForCausalLM' and len(model.lora_report.wrapped) == 14
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline[0]['num_points'], pipeline[1]['prob'], pipeline[3]['tokenizer'] = 32, 0.0, str(llm_dir)
    dataset = DATASETS.build(dict(type='CADRecodeDataset', data_root=str(data), ann_file='train.json',
                                  pipeline=pipeline))
    batch = pseudo_collate([dataset[i] for i in range(4)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(30):  # measured: loss 9.0 -> 0.03 after 20 steps
        loss = model(batch['inputs'], batch['data_samples'], mode='loss')['loss']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 4.0 and losses[-1] < 0.05 * losses[0]
    model.eval()
    assert [p.pred_code for p in model(batch['inputs'], batch['data_samples'], mode='predict')] == \
        [s.gt_code for s in batch['data_samples']]
    frozen_norms = [p.requires_grad for n, p in model.named_parameters() if n.endswith(('q_norm.weight',
                                                                                          'k_norm.weight'))]
    assert len(frozen_norms) == 4 and not any(frozen_norms)


def test_generator_checks_requirements_before_writing(tmp_path, monkeypatch):
    generator = load_tool('data/make_synthetic_cad')
    bad_config = tmp_path / 'bad.py'
    bad_config.write_text("llm_path = 'x/tiny_nothing'\nllm_config = dict(model_type='no_such_llm')\n")
    with pytest.raises(SystemExit, match='no_such_llm'):
        generator.main(['--out', str(tmp_path / 'a'), '--config', str(bad_config)])
    monkeypatch.setitem(__import__('sys').modules, 'tokenizers', None)  # as if the llm extra were missing
    with pytest.raises(SystemExit, match='tokenizers.*EXTRAS=all bash tools/setup_env.sh'):
        generator.main(['--out', str(tmp_path / 'b'), '--no-llm'])
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()  # nothing half-written
