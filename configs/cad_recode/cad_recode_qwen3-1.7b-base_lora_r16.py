# CAD-Recode with LoRA on Qwen3-1.7B-Base, seed 002's LLM and LoRA (r=16, alpha=32, dropout 0.1 on q/k/v/o_proj and
# gate/up/down_proj of all 28 layers: 17,432,576 parameters) + the point encoder (51 -> 2048: 106,496) trained in
# full; the LLM in bfloat16. Qwen3's per-head q_norm/k_norm stay frozen. As seed 002, training ends with
# work_dir/final_lora_weights/ (adapter + point encoder + tokenizer files + cad_recode.json) and work_dir/merged_model/.
# Nothing is downloaded: put the HF folder of Qwen/Qwen3-1.7B-Base (config.json, *.safetensors, tokenizer files) at
#   checkpoints/Qwen3-1.7B-Base
#   python tools/train.py configs/cad_recode/cad_recode_qwen3-1.7b-base_lora_r16.py
_base_ = ['./cad_recode_qwen2-1.5b_lora_r16.py']

llm_path = 'checkpoints/Qwen3-1.7B-Base'
num_points = 256

model = dict(llm=dict(pretrained=llm_path), tokenizer=llm_path)
train_pipeline = [
    dict(type='LoadCADPointCloud', num_points=num_points, recipe='v1.5'),
    dict(type='PointCloudNoise', std=0.01, prob=0.5),
    dict(type='LoadCADCode'),
    dict(type='TokenizeCADCode', tokenizer=llm_path, max_code_tokens=767),
    dict(type='PackCADInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
