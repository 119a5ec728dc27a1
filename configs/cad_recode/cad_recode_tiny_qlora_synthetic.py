# CAD-Recode QLoRA on synthetic CAD programs: the tiny LoRA config with the LLM's projections stored in 4-bit NF4
# (double quantization, bf16 compute; bitsandbytes runs on CPU). Same data as the LoRA config.
#   python tools/train.py configs/cad_recode/cad_recode_tiny_qlora_synthetic.py
_base_ = ['./cad_recode_tiny_lora_synthetic.py']

model = dict(lora=dict(quantize_bits=4, quant_type='nf4', double_quant=True, compute_dtype='bf16'))
