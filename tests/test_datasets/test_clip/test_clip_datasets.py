"""CLIP data: CSV lists, few-shot draws, CLIP's crops."""
import cv2
import numpy as np
import pytest
from mmengine.registry import init_default_scope

from opentad_lora.datasets.clip import (CLIPCenterCrop, CLIPRandomResizedCrop, CSVImageDataset, FewShotImageFolder,
                                        few_shot_indices, write_synthetic_clip_data)


@pytest.fixture(autouse=True)
def _scope():
    init_default_scope('opentad_lora')  # datasets build their pipelines from our registry


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('clip_data')
    return dict(write_synthetic_clip_data(root, num_classes=3, train_per_class=6, val_per_class=2, img_size=16),
                root=root)


def info(dataset, index: int) -> dict:
    return dataset.get_data_info(index)


def test_csv_dataset_reads_names_or_integer_labels(data, tmp_path):
    root = data['root']
    ds = CSVImageDataset('train.csv', data_root=str(root))
    assert ds.metainfo['classes'] == ('class_0', 'class_1', 'class_2')
    assert len(ds) == 18 and [ds.get_data_info(i)['gt_label'] for i in (0, 6, 17)] == [0, 1, 2]
    sample = ds[7]
    assert tuple(sample['inputs'].shape) == (3, 16, 16) and int(sample['data_samples'].gt_label) == 1
    folder = FewShotImageFolder(str(root / 'train'))
    assert [info(folder, i)['img_path'] for i in range(18)] == [info(ds, i)['img_path'] for i in range(18)]
    (tmp_path / 'ints.csv').write_text(f'file,y\n{root}/train/class_1/0000.png,1\n{root}/train/class_0/0001.png,0\n')
    ints = CSVImageDataset(str(tmp_path / 'ints.csv'), path_column='file', label_column='y', classes=['cat', 'dog'])
    assert [info(ints, i)['gt_label'] for i in range(2)] == [1, 0] and ints.metainfo['classes'] == ('cat', 'dog')


def test_csv_errors_name_the_file_and_row(data, tmp_path):
    bad = tmp_path / 'bad.csv'
    bad.write_text('path,label\na.png,class_0\nb.png,zebra\n')
    with pytest.raises(ValueError, match=r'bad\.csv line 3: label .zebra.'):
        CSVImageDataset(str(bad), classes=['class_0', 'class_1'])
    bad.write_text('image,label\na.png,0\n')
    with pytest.raises(ValueError, match=r"no column\(s\) \['path'\]"):
        CSVImageDataset(str(bad))
    with pytest.raises(FileNotFoundError, match='missing.csv'):
        CSVImageDataset(str(tmp_path / 'missing.csv'))


def test_few_shot_draws_k_per_class_reproducibly(data):
    labels = [0] * 10 + [1] * 3 + [2] * 7
    picked = few_shot_indices(labels, shots=4, seed=3)
    assert np.bincount(np.asarray(labels)[picked]).tolist() == [4, 3, 4]
    assert picked == few_shot_indices(labels, shots=4, seed=3)
    assert picked != few_shot_indices(labels, shots=4, seed=4)
    # Adding a class leaves the draws of the others unchanged.
    assert [i for i in few_shot_indices(labels + [3] * 5, 4, 3) if i < 20] == picked
    folder = FewShotImageFolder(str(data['root'] / 'train'), num_shots=2, shot_seed=0)
    assert len(folder) == 6 and sorted(info(folder, i)['gt_label'] for i in range(6)) == [0, 0, 1, 1, 2, 2]


def test_center_crop_resizes_the_short_side_then_crops_the_middle():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # the central 40 columns are white
    out = CLIPCenterCrop(20).transform(dict(img=img))
    assert out['img'].shape == (20, 20, 3) and out['img_shape'] == (20, 20)
    assert out['img'][:, 2:18].min() == 255  # bicubic edges aside, the crop is the white middle


def test_random_resized_crop_has_the_size_and_follows_the_seed():
    img = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    crop = CLIPRandomResizedCrop(24, scale=(0.3, 0.6))
    np.random.seed(5)
    first = crop.transform(dict(img=img))['img']
    np.random.seed(5)
    again = crop.transform(dict(img=img))['img']
    assert first.shape == (24, 24, 3) and np.array_equal(first, again)
    # Full area at the image's own aspect ratio: the whole image, resized, then flipped.
    whole = CLIPRandomResizedCrop(30, scale=(1.0, 1.0), ratio=(5 / 3, 5 / 3), flip_prob=1.0)
    expected = cv2.resize(img, (30, 30), interpolation=cv2.INTER_CUBIC)[:, ::-1]
    np.testing.assert_array_equal(whole.transform(dict(img=img))['img'], expected)
