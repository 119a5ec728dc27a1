"""Sliding windows, random truncation, padding and packing of the THUMOS end-to-end datasets."""
import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope

from opentad_lora.datasets.tad import (Flip, LoadFrames, RandomCrop, ThumosPaddingDataset, ThumosSlidingDataset,
                                       truncate_gt)

CLASSES = ['BaseballPitch', 'Billiards']  # as written by conftest.py

PIPELINE = [dict(type='PrepareVideoInfo', format='mp4'), dict(type='LoadFrames', method='sliding_window'),
            dict(type='ResizeShortSide', short_side=16), dict(type='CenterCrop', crop_size=16),
            dict(type='PackTADInputs')]


@pytest.fixture(autouse=True)
def scope():
    init_default_scope('opentad_lora')


def make(cls, root, **kwargs):
    args = dict(ann_file=str(root / 'anno.json'), data_path=str(root / 'video'),
                class_map=str(root / 'category_idx.txt'), window_size=32, pipeline=PIPELINE)
    args.update(kwargs)
    return cls(**args)


def test_training_windows_keep_only_mostly_covered_actions(thumos_dir):
    # 70 snippets, window 32, overlap 0.25 -> starts 0, 24 and 38 (the last aligned to the end). Actions in
    # snippets: [5, 20] and [40, 65]; window 24 holds 16/25 < 0.75 of the second one, so it is dropped.
    dataset = make(ThumosSlidingDataset, thumos_dir, subset_name='training', window_overlap_ratio=0.25,
                   ioa_thresh=0.75)
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    assert [info['window_start'] for info in infos] == [0, 38]
    np.testing.assert_allclose(infos[0]['gt_segments'], [[5, 20]])
    np.testing.assert_allclose(infos[1]['gt_segments'], [[2, 27]])
    assert [info['gt_labels'].tolist() for info in infos] == [[1], [0]]
    assert dataset.metainfo['classes'] == tuple(CLASSES)


def test_test_windows_cover_every_video_and_pad_the_short_one(thumos_dir, decoded):
    dataset = make(ThumosSlidingDataset, thumos_dir, subset_name='validation', test_mode=True)
    assert len(dataset) == 1
    item = dataset[0]
    clip, sample = item['inputs'], item['data_samples']
    assert clip.shape == (3, 32, 16, 16) and clip.dtype == torch.uint8
    assert sample.valid_len == 20 and sample.window_start_frame == 0 and sample.fps == pytest.approx(10)
    assert 'gt_segments' not in sample
    levels = clip.float().mean(dim=(0, 2, 3))  # frames are uniform, so resizing and cropping keep their level
    expected = torch.from_numpy(decoded['video_test_1'].reshape(20, -1).mean(1)).float()
    torch.testing.assert_close(levels[:20], expected, atol=1, rtol=0)
    assert torch.equal(clip[:, 20:], clip[:, 19:20].expand(-1, 12, -1, -1))  # padding repeats the last frame


def test_frame_folders_feed_the_same_pipeline(thumos_dir):
    pipeline = [dict(PIPELINE[0], format='')] + PIPELINE[1:]
    dataset = make(ThumosSlidingDataset, thumos_dir, subset_name='validation', test_mode=True, pipeline=pipeline,
                   data_path=str(thumos_dir / 'frames'))
    clip = dataset[0]['inputs'].float()
    assert clip.shape == (3, 32, 16, 16) and dataset[0]['data_samples'].valid_len == 20
    expected = 20 + 2 * torch.arange(20.0)  # the folder's JPEGs keep the written grey levels
    torch.testing.assert_close(clip.mean(dim=(0, 2, 3))[:20], expected, atol=0.9, rtol=0)


def test_random_truncation_reads_the_window_it_reports(thumos_dir, decoded):
    pipeline = [dict(type='PrepareVideoInfo'), dict(type='LoadFrames', method='random_trunc', trunc_thresh=0.75),
                dict(type='PackTADInputs')]
    dataset = make(ThumosPaddingDataset, thumos_dir, subset_name='training', pipeline=pipeline)
    assert len(dataset) == 1
    starts = set()
    for seed in range(6):
        np.random.seed(seed)
        item = dataset[0]
        sample = item['data_samples']
        start = sample.window_start_frame
        starts.add(start)
        assert item['inputs'].shape[1] == 32 and sample.valid_len == 32
        frames = decoded['video_validation_1'][start:start + 32]
        assert np.array_equal(item['inputs'].permute(1, 2, 3, 0).numpy(), frames)
        actions = np.array([[5.0, 20.0], [40.0, 65.0]]) - start  # in the window's snippets
        clipped = np.clip(actions, 0, 32)
        covered = clipped[:, 1] - clipped[:, 0] >= 0.75 * (actions[:, 1] - actions[:, 0])
        assert covered.any()
        np.testing.assert_allclose(sample.gt_segments.numpy(), clipped[covered])
    assert len(starts) > 1


def test_a_missing_video_names_the_file_when_loaded(thumos_dir, tmp_path):
    dataset = make(ThumosSlidingDataset, thumos_dir, subset_name='validation', test_mode=True,
                   data_path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match='video_test_1.mp4'):
        dataset[0]


def test_truncate_gt_clips_and_filters():
    segments, labels = np.array([[0.0, 10.0], [8.0, 12.0], [20.0, 30.0]]), np.array([0, 1, 2])
    kept, kept_labels = truncate_gt(segments, labels, 5.0, 25.0, thresh=0.5)
    np.testing.assert_allclose(kept, [[0, 5], [3, 7], [15, 20]])
    assert kept_labels.tolist() == [0, 1, 2]
    kept, kept_labels = truncate_gt(segments, labels, 5.0, 25.0, thresh=0.6)
    assert kept_labels.tolist() == [1]


def test_flip_and_random_crop_treat_all_frames_alike():
    imgs = np.random.randint(0, 255, (4, 10, 12, 3), dtype=np.uint8)
    np.random.seed(0)
    cropped = RandomCrop(6)(dict(imgs=imgs, video_name='v'))['imgs']
    assert cropped.shape == (4, 6, 6, 3)
    top, left = next((t, l) for t in range(5) for l in range(7) if np.array_equal(imgs[0, t:t + 6, l:l + 6],
                                                                                  cropped[0]))
    assert np.array_equal(imgs[:, top:top + 6, left:left + 6], cropped)
    flipped = Flip(flip_ratio=1.0)(dict(imgs=imgs))
    assert flipped['flip'] and np.array_equal(flipped['imgs'], imgs[:, :, ::-1])
    with pytest.raises(ValueError, match='method'):
        LoadFrames(method='resize')


def test_the_decoder_is_chosen_in_the_config_and_gives_the_same_clips(thumos_dir):
    """``LoadFrames(backend=...)`` reaches the reader: PyAV and OpenCV windows of the dataset are bit-identical."""
    pytest.importorskip('av')
    clips = []
    for backend in ('opencv', 'pyav'):
        pipeline = [PIPELINE[0], dict(PIPELINE[1], backend=backend, decoder_threads=1)] + PIPELINE[2:]
        dataset = make(ThumosSlidingDataset, thumos_dir, subset_name='validation', test_mode=True, pipeline=pipeline)
        clips.append(dataset[0]['inputs'])
    assert torch.equal(clips[0], clips[1])
    with pytest.raises(ValueError, match='backend'):
        make(ThumosSlidingDataset, thumos_dir, subset_name='validation', test_mode=True,
             pipeline=[PIPELINE[0], dict(PIPELINE[1], backend='gstreamer')] + PIPELINE[2:])[0]
