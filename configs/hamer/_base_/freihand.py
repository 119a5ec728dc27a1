# FreiHAND layout: <split>_K.json, <split>_xyz.json, <split>_mano.json, <split>_verts.json, <split>/rgb/%08d.jpg.
# Crops of 256x256 around the keypoints; HaMeR's augmentation for training; MoCap poses for the discriminator.
# FreiHAND's finger pose is relative to MANO's mean pose: the top-level config sets add_hands_mean=True together
# with mano_model_path (hands_mean comes from the MANO file).
data_root = 'data/freihand/'
img_suffix = '.jpg'
mocap_file = None  # HaMeR's freihand_mocap.npz (hand_pose (N, 48), betas (N, 10)); None: the samples' own MANO
dataset_type = 'FreiHANDDataset'

train_pipeline = [
    dict(type='LoadHandImage'),
    dict(type='HandCrop', img_size=256, bbox_expand=2.0, augment=True, scale_factor=0.3, rot_factor=30.0,
         trans_factor=0.02, color_scale=0.2, rot_aug_rate=0.6, trans_aug_rate=0.5),
    dict(type='PackHandInputs'),
]
test_pipeline = [
    dict(type='LoadHandImage'),
    dict(type='HandCrop', img_size=256, bbox_expand=2.0, augment=False),
    dict(type='PackHandInputs'),
]

train_dataloader = dict(
    batch_size=8,  # HaMeR: TRAIN.BATCH_SIZE 8
    num_workers=4,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='training', img_suffix=img_suffix,
                 versions=(0, 1, 2, 3), add_hands_mean=False, mano_model_path=None,
                 mocap_file=mocap_file, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='evaluation', img_suffix=img_suffix,
                 add_hands_mean=False, mano_model_path=None, pipeline=test_pipeline,
                 test_mode=True))
test_dataloader = val_dataloader

val_evaluator = dict(type='HandMeshMetric', f_thresholds=(0.005, 0.015))
test_evaluator = val_evaluator
