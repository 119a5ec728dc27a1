# HaMeR ViT-H + LoRA, adversarial fine-tuning on FreiHAND (needs MANO_RIGHT.pkl and HaMeR's checkpoint):
#   python tools/train.py configs/hamer/hamer_vit_h_lora_freihand.py
#   python tools/test.py configs/hamer/hamer_vit_h_lora_freihand.py work_dirs/hamer_vit_h_lora_freihand/best_*.pth
#   python tools/print_lora_info.py configs/hamer/hamer_vit_h_lora_freihand.py
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/lora_runtime.py',
    './_base_/hamer_vit_h_lora.py',
    './_base_/freihand.py',
    './_base_/adversarial_schedule.py',
]

mano_model_path = 'data/mano/MANO_RIGHT.pkl'  # licence-restricted: register at mano.is.tue.mpg.de
pretrained_model_path = '_DATA/hamer_ckpts/checkpoints/hamer.ckpt'  # HaMeR's release (Lightning checkpoint)

model = dict(mano=dict(model_path=mano_model_path), pretrained_model_path=pretrained_model_path)
train_dataloader = dict(dataset=dict(add_hands_mean=True, mano_model_path=mano_model_path))
val_dataloader = dict(dataset=dict(add_hands_mean=True, mano_model_path=mano_model_path))
test_dataloader = val_dataloader

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),  # seed: GENERAL.LOG_STEPS
    # MMEngine keeps ONE best checkpoint by PA-MPJPE (best_hand_PA-MPJPE_iter_N.pth, replaced when beaten) plus the
    # last three periodic ones (max_keep_ckpts=3); the seed's CHECKPOINT_SAVE_TOP_K 3 (three best) has no equivalent.
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=_base_.checkpoint_steps, max_keep_ckpts=3,
                    save_best='hand/PA-MPJPE', rule='less', save_last=True),
)
# LoRA weights on their own: work_dir/lora_weights_step_XXXXXX/ every checkpoint_steps, and final_lora_weights/.
custom_hooks = [
    dict(type='LoRACheckpointHook', trainable_only=True, interval=_base_.checkpoint_steps, max_keep=-1,
         save_final=True, save_merged=False),
]
log_processor = dict(by_epoch=False)
