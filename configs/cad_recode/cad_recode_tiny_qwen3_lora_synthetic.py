# CAD-Recode LoRA on synthetic CAD programs with a tiny Qwen3 (the architecture of seed 002's Qwen3-1.7B-Base, with
# its per-head q/k RMSNorm). Make the data and this config's seeded tiny Qwen3 (saved in the HF layout) first:
#   python tools/data/make_synthetic_cad.py --out data/synthetic_cad \
#       --config configs/cad_recode/cad_recode_tiny_qwen3_lora_synthetic.py
#   python tools/train.py configs/cad_recode/cad_recode_tiny_qwen3_lora_synthetic.py
_base_ = ['./cad_recode_tiny_lora_synthetic.py']

data_root = 'data/synthetic_cad'
llm_path = data_root + '/tiny_qwen3'  # written by make_synthetic_cad.py from `llm_config` below
num_points = 256
llm_config = dict(model_type='qwen3', hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                  initializer_range=0.3, tie_word_embeddings=True, _delete_=True)

model = dict(llm=dict(pretrained=llm_path), tokenizer=llm_path)
train_pipeline = [
    dict(type='LoadCADPointCloud', num_points=num_points),
    dict(type='PointCloudNoise', std=0.01, prob=0.5),
    dict(type='LoadCADCode'),
    dict(type='TokenizeCADCode', tokenizer=llm_path),
    dict(type='PackCADInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
