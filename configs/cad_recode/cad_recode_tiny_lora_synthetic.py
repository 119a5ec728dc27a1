# CAD-Recode LoRA on synthetic CAD programs, tiny Qwen2 (CPU, a few minutes). Make the data, its tokenizer and the
# stand-in pretrained tiny Qwen2 (seeded, saved in the HF layout) first:
#   python tools/data/make_synthetic_cad.py --out data/synthetic_cad
#   python tools/train.py configs/cad_recode/cad_recode_tiny_lora_synthetic.py      # --no-validate without CadQuery
#   python tools/test.py configs/cad_recode/cad_recode_tiny_lora_synthetic.py \
#       work_dirs/cad_recode_tiny_lora_synthetic/epoch_40.pth
#   python tools/cad_infer.py work_dirs/cad_recode_tiny_lora_synthetic/final_lora_weights \
#       --points data/synthetic_cad/val/points/00000.npy
# Training ends as in seed 002: final_lora_weights/ (adapter + point encoder, tokenizer files, cad_recode.json naming
# the base) and merged_model/ (HF layout: merged LLM + point_encoder.* + tokenizer), both under the work dir.
_base_ = [
    '../_base_/schedules/adamw_cosine.py',
    '../_base_/default_runtime.py',
    '../_base_/lora_runtime.py',
]

data_root = 'data/synthetic_cad'
llm_path = data_root + '/tiny_qwen2'  # written by make_synthetic_cad.py from `llm_config` below
# The tiny Qwen2 that make_synthetic_cad.py initialises (seeded). A random frozen base needs a larger init scale
# than real models (initializer_range 0.02) so that its frozen tied embeddings can give a peaked softmax at all.
llm_config = dict(model_type='qwen2', hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  initializer_range=0.3, tie_word_embeddings=True)
num_points = 256  # CAD-Recode v1.5: 256 furthest-point samples per shape
lora_targets = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']

model = dict(
    type='CADRecodeLoRA',
    llm=dict(pretrained=llm_path, dtype='float32'),
    tokenizer=llm_path,
    # The point encoder is added to modules_to_save (trained in full, saved with the adapter).
    lora=dict(r=16, alpha=32, dropout=0.0, targets=lora_targets),
    max_new_tokens=160,
    save_tokenizer=True,  # tokenizer files next to the adapter (seed 002)
)

train_pipeline = [
    dict(type='LoadCADPointCloud', num_points=num_points),
    dict(type='PointCloudNoise', std=0.01, prob=0.5),
    dict(type='LoadCADCode'),
    dict(type='TokenizeCADCode', tokenizer=llm_path),
    dict(type='PackCADInputs'),
]
test_pipeline = [
    dict(type='LoadCADPointCloud', num_points=num_points),
    dict(type='LoadCADCode'),
    dict(type='PackCADInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='CADRecodeDataset', data_root=data_root, ann_file='train.json', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='CADRecodeDataset', data_root=data_root, ann_file='val.json', pipeline=test_pipeline))
test_dataloader = val_dataloader
# Programs run in the CadQuery sandbox (3 s, as CAD-Recode); needs the `cad` extra.
val_evaluator = dict(type='CADMetric', n_points=8192, iou_resolution=64, timeout=3.0)
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=1e-2, weight_decay=0.0))
train_cfg = dict(max_epochs=40, val_interval=20)
default_hooks = dict(checkpoint=dict(interval=10, max_keep_ckpts=2))
# save_merged=True: work_dir/merged_model/ written by CADRecodeLoRA.export_merged after training (seed 002 default).
custom_hooks = [
    dict(type='LoRACheckpointHook', trainable_only=True, interval=-1, max_keep=3, save_final=True, save_merged=True),
]
