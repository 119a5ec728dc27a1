# Add to `_base_` of every LoRA config (after default_runtime.py).
# LoRACheckpointHook trims epoch checkpoints to the trainable tensors (+ optimizer, schedulers, message hub; the
# frozen base is rebuilt from the model's pretrained file) and writes PEFT adapter folders: work_dir/
# lora_weights_step_XXXXXX/ every `interval` iterations (-1: never) and work_dir/final_lora_weights/ at the end;
# `save_merged=True` also writes work_dir/merged_model/model.pth.
custom_hooks = [
    dict(type='LoRACheckpointHook', trainable_only=True, interval=-1, max_keep=3, save_final=True,
         save_merged=False),
]
