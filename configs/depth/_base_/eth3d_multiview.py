# ETH3D high-res multi-view scenes (the seed's 5 facade scenes), laid out as downloaded:
#   data/eth3d/<scene>/images/dslr_images_undistorted/*.JPG
#   data/eth3d/<scene>/dslr_calibration_undistorted/{cameras,images,points3D}.txt   (COLMAP text; .bin also read)
#   data/eth3d/<scene>/ground_truth_depth/dslr_images/*.JPG   (raw float32 depth, the "dslr_depth" download)
# Training (the seed): first 85% of each scene's frames, 8-frame windows with 50% overlap, 518x518, sparse depth
# from the COLMAP points each image observes, depth kept in [0.1, 100] m.
# Evaluation (Marigold's ETH3D protocol): the other 15%, non-overlapping windows, dense ground-truth depth,
# least-squares scale-and-shift alignment per image, AbsRel and delta1 (also SqRel, RMSE, RMSE-log, delta2/3).
data_root = 'data/eth3d'
scenes = ['facade', 'electro', 'office', 'terrace', 'delivery_area']
dataset_type = 'COLMAPMultiViewDataset'
num_views = 8
img_size = (518, 518)

train_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, scenes=scenes, num_views=num_views, stride=num_views // 2,
                 split='train', train_ratio=0.85, img_size=img_size, depth_source='sparse',
                 depth_range=(0.1, 100.0)),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, scenes=scenes, num_views=num_views, stride=num_views,
                 split='val', train_ratio=0.85, img_size=img_size, depth_source='dense'),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='DepthMetric', alignment='least_squares', align_per='frame')
test_evaluator = val_evaluator
