# CAD-Recode with LoRA on Qwen2-1.5B (CAD-Recode's LLM): LoRA r=16 on q/k/v/o_proj and gate/up/down_proj of all 28
# layers (18,464,768 parameters) + the point encoder (79,872) trained in full; the LLM in bfloat16.
# Nothing is downloaded: put the HF folders here first (config.json, *.safetensors, tokenizer files):
#   checkpoints/Qwen2-1.5B            a Qwen2-1.5B base (or a CAD-Recode checkpoint, whose point encoder is loaded;
#                                     then the model's point_recipe says which LoadCADPointCloud recipe it needs:
#                                     'v1' for filapro/cad-recode, 'v1.5' for filapro/cad-recode-v1.5)
#   data/cad_recode/{train,val}.json  annotation files of (points, program) pairs (see docs/cad_recode.md)
#   python tools/train.py configs/cad_recode/cad_recode_qwen2-1.5b_lora_r16.py
# After training (as seed 002): work_dir/final_lora_weights/ (adapter + point encoder, tokenizer files and
# cad_recode.json naming the base) and work_dir/merged_model/ (HF layout: merged LLM + point_encoder.* + tokenizer).
_base_ = [
    '../_base_/schedules/adamw_cosine.py',
    '../_base_/default_runtime.py',
    '../_base_/lora_runtime.py',
]

data_root = 'data/cad_recode'
llm_path = 'checkpoints/Qwen2-1.5B'
num_points = 256
lora_targets = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']

model = dict(
    type='CADRecodeLoRA',
    llm=dict(pretrained=llm_path, dtype='bfloat16', attn_implementation='sdpa'),
    tokenizer=llm_path,
    lora=dict(r=16, alpha=32, dropout=0.1, targets=lora_targets),
    max_new_tokens=768,
    gradient_checkpointing=True,
    save_tokenizer=True,  # tokenizer files next to the adapter (seed 002)
)

train_pipeline = [
    dict(type='LoadCADPointCloud', num_points=num_points, recipe='v1.5'),
    dict(type='PointCloudNoise', std=0.01, prob=0.5),  # CAD-Recode v1.5
    dict(type='LoadCADCode'),
    dict(type='TokenizeCADCode', tokenizer=llm_path, max_code_tokens=767),
    dict(type='PackCADInputs'),
]
test_pipeline = [
    dict(type='LoadCADPointCloud', num_points=num_points, recipe='v1.5'),
    dict(type='LoadCADCode'),
    dict(type='PackCADInputs'),
]
train_dataloader = dict(
    batch_size=18, num_workers=8,  # CAD-Recode v1.5: 18 x 2 accumulation on one H100
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='CADRecodeDataset', data_root=data_root, ann_file='train.json', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='CADRecodeDataset', data_root=data_root, ann_file='val.json', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CADMetric', n_points=8192, iou_resolution=128, timeout=3.0)
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=2e-4, weight_decay=0.01), accumulative_counts=2)
train_cfg = dict(max_epochs=3, val_interval=1)
# Seed 002 merges the adapter automatically at the end: save_merged=True writes work_dir/merged_model/ through
# CADRecodeLoRA.export_merged (set False to skip the merge, e.g. to save the memory of a float copy).
custom_hooks = [
    dict(type='LoRACheckpointHook', trainable_only=True, interval=-1, max_keep=3, save_final=True, save_merged=True),
]
