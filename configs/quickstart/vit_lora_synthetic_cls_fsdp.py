# EXPERIMENTAL: the quickstart ViT-LoRA trained with FSDP (FSDP1) through MMEngine's FlexibleRunner.
#   torchrun --nproc-per-node 2 tools/train.py configs/quickstart/vit_lora_synthetic_cls_fsdp.py
#   torchrun --nproc-per-node 2 tools/train.py configs/quickstart/vit_lora_synthetic_cls_fsdp.py --resume
# Each TransformerBlock is one FSDP unit and every trainable leaf (LoRA A/B, the head) another, so frozen and
# trainable weights never share a flat parameter. Checkpoints are full state dicts gathered on rank 0
# (state_dict_cfg='full'), loadable by tools/test.py and tools/merge_lora.py like any other checkpoint.
# For ViTs that fit on one GPU, DDP (the plain quickstart config under torchrun) is faster: FSDP pays off when the
# frozen base does not fit, which LoRA makes rare.
_base_ = ['./vit_lora_synthetic_cls.py']

runner_type = 'FlexibleRunner'
strategy = dict(
    type='opentad_lora.LoRAFSDPStrategy',  # scoped: FlexibleRunner builds it before the default scope is set
    model_wrapper=dict(
        type='MMFullyShardedDataParallel',
        auto_wrap_policy=dict(type='lora_fsdp_auto_wrap_policy', block_types=['TransformerBlock']),
        use_orig_params=True,
    ),
    state_dict_cfg='full',
)
# The LoRA adapter folders are exported from a checkpoint afterwards (tools/merge_lora.py --adapter-only): the
# LoRACheckpointHook reads unsharded parameters, which FSDP does not keep between steps.
custom_hooks = []
