# CAD-Recode with QLoRA on Qwen2-1.5B: the LoRA r=16 config with the frozen projections in 4-bit NF4 (double
# quantization), bf16 compute and bf16 LoRA weights; the point encoder stays float32 and fully trained.
#   python tools/train.py configs/cad_recode/cad_recode_qwen2-1.5b_qlora_r16.py
_base_ = ['./cad_recode_qwen2-1.5b_lora_r16.py']

model = dict(lora=dict(quantize_bits=4, quant_type='nf4', double_quant=True, compute_dtype='bf16'))
