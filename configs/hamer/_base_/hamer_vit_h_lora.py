# HaMeR (ViT-H backbone + MANO transformer-decoder head + HMR discriminator) with LoRA exactly where the seed puts
# it. Sizes, names and loss weights as in HaMeR's hamer_vit_transformer.yaml. Load the official checkpoint with
# `pretrained_model_path` (keys backbone.* / mano_head.* / discriminator.*; mano.* is rebuilt from MANO_RIGHT.pkl).
lora_rank = 4  # seed defaults: rank 4, alpha 1.0, dropout 0.0
lora_alpha = 1.0
lora_dropout = 0.0

model = dict(
    type='HaMeRLoRA',
    backbone=dict(type='VisionTransformer', arch='hamer-huge'),  # 256x192, patch 16 pad 2, depth 32, width 1280
    mano_head=dict(
        type='MANOTransformerDecoderHead',
        context_dim=1280,
        dim=1024,
        depth=6,
        heads=8,
        dim_head=64,
        mlp_dim=1024,
        dropout=0.0,
        emb_dropout=0.0,
        ief_iters=1,
        transformer_input='zero',
        mean_params=None,  # HaMeR's mano_mean_params.npz; the official checkpoint also carries the mean
    ),
    discriminator=dict(type='HaMeRDiscriminator'),
    mano=dict(model_path=None),  # set by the top-level config
    pretrained_model_path=None,
    focal_length=5000.0,
    image_size=256,
    crop_width=32,  # 256x256 crop -> 256x192 backbone input
    loss_weights=dict(keypoints_3d=0.05, keypoints_2d=0.01, global_orient=0.001, hand_pose=0.001, betas=0.0005,
                      adversarial=0.0005),
    # Shared LoRA fields, then one entry per part (a part left out is frozen; lora=None trains everything).
    lora=dict(
        r=lora_rank,
        alpha=lora_alpha,
        dropout=lora_dropout,
        backbone=dict(targets=['attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2']),
        # `to_out` is Sequential(Linear, Dropout): its Linear is `to_out.0`.
        mano_head=dict(targets=['to_qkv', 'to_out.0', 'to_kv', 'to_q', 'decpose', 'decshape', 'deccam']),
        # D_conv1/2 are 1x1 Conv2d -> LoRAConv; the fcs -> LoRALinear.
        discriminator=dict(targets=['D_conv1', 'D_conv2', 'betas_fc1', 'betas_fc2', 'D_alljoints_fc1',
                                    'D_alljoints_fc2']),
    ),
)
