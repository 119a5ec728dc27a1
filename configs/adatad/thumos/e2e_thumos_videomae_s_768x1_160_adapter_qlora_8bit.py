# AdaTAD + QLoRA with an 8-bit (LLM.int8) frozen VideoMAE-S instead of 4-bit NF4; everything else as the 4-bit one.
_base_ = ['./e2e_thumos_videomae_s_768x1_160_adapter_qlora.py']

model = dict(backbone=dict(quantize_bits=8))

work_dir = 'exps/thumos/adatad/e2e_actionformer_videomae_s_768x1_160_adapter_qlora_8bit'
