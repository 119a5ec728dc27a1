# CAD-Recode with QLoRA on Qwen3-1.7B-Base (seed 002's QLoRA: 4-bit NF4 frozen projections, bfloat16 compute; here
# with double quantization and bf16 LoRA weights); the point encoder stays float32 and fully trained.
#   python tools/train.py configs/cad_recode/cad_recode_qwen3-1.7b-base_qlora_r16.py
_base_ = ['./cad_recode_qwen3-1.7b-base_lora_r16.py']

model = dict(lora=dict(quantize_bits=4, quant_type='nf4', double_quant=True, compute_dtype='bf16'))
