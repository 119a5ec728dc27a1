"""Tiny CAD-Recode fixtures: four short synthetic programs, their tokenizer and a tiny Qwen2 built from a config."""
import pytest
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope

from opentad_lora.datasets.cad import CADRecodeDataset, write_synthetic_dataset

TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
# A random frozen base needs a larger init scale than real models for its tied embeddings to give a peaked softmax.
TINY_LLM = dict(model_type='qwen2', hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, initializer_range=0.3, tie_word_embeddings=True)
NUM_POINTS = 32


@pytest.fixture(scope='session')
def cad_data(tmp_path_factory):
    """Four boxes/cylinders (programs of about 25 tokens) with their point clouds and a BPE tokenizer."""
    root = tmp_path_factory.mktemp('cad_models')
    return write_synthetic_dataset(root, dict(train=4, val=2), seed=0, num_surface_points=512,
                                   kinds=('box', 'cylinder'), tokenizer_vocab=400)


def build_tiny(cad_data, lora=None, **kwargs):
    from opentad_lora.models.cad import CADRecodeLoRA

    return CADRecodeLoRA(llm=dict(config=TINY_LLM, seed=0), tokenizer=str(cad_data / 'tokenizer'), lora=lora,
                         max_new_tokens=48, **kwargs)


def lora_cfg(**kwargs):
    return dict(r=8, alpha=16, targets=TARGETS, **kwargs)


@pytest.fixture(scope='session')
def cad_batch(cad_data):
    init_default_scope('opentad_lora')
    dataset = CADRecodeDataset(ann_file='train.json', data_root=str(cad_data), pipeline=[
        dict(type='LoadCADPointCloud', num_points=NUM_POINTS), dict(type='LoadCADCode'),
        dict(type='TokenizeCADCode', tokenizer=str(cad_data / 'tokenizer')), dict(type='PackCADInputs')])
    return pseudo_collate([dataset[i] for i in range(len(dataset))])


@pytest.fixture
def make_model(cad_data):
    """``make_model(lora=None | dict, **kwargs)``: the seeded tiny CADRecodeLoRA (same frozen base every call)."""
    return lambda lora=None, **kwargs: build_tiny(cad_data, lora, **kwargs)


@pytest.fixture
def make_lora():
    """``make_lora(**overrides)``: LoRA r=8 on the seven Qwen2 projections."""
    return lora_cfg

