"""ImageFolderDataset + transforms on real PNG files written by the synthetic generator."""
import cv2
import numpy as np
import pytest
import torch

from opentad_lora.datasets.classification import (ImageFolderDataset, ResizeImage, class_pattern_image,
                                                   write_synthetic_image_folder)


@pytest.fixture(scope='module')
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('cls')
    counts = write_synthetic_image_folder(root, num_classes=3, train_per_class=4, val_per_class=2, img_size=16)
    assert counts == {'train': 12, 'val': 6}
    return root


def test_dataset_lists_classes_labels_and_reads_rgb_uint8(image_root):
    dataset = ImageFolderDataset(str(image_root / 'train'))
    assert len(dataset) == 12
    assert dataset.metainfo['classes'] == ('class_0', 'class_1', 'class_2')
    sample = dataset[5]
    path = sample['data_samples'].img_path
    assert path.endswith('class_1/0001.png') and int(sample['data_samples'].gt_label) == 1
    assert sample['inputs'].dtype == torch.uint8 and sample['inputs'].shape == (3, 16, 16)
    bgr = cv2.imread(path)
    assert np.array_equal(sample['inputs'].permute(1, 2, 0).numpy(), bgr[..., ::-1])


def test_explicit_class_order_sets_labels(image_root):
    dataset = ImageFolderDataset(str(image_root / 'val'), classes=['class_2', 'class_0'])
    assert len(dataset) == 4
    assert [int(dataset[i]['data_samples'].gt_label) for i in range(4)] == [0, 0, 1, 1]
    assert dataset[0]['data_samples'].img_path.endswith('class_2/0000.png')


def test_generator_is_deterministic_and_classes_differ(tmp_path, image_root):
    write_synthetic_image_folder(tmp_path, num_classes=3, train_per_class=4, val_per_class=2, img_size=16)
    assert (tmp_path / 'val/class_2/0001.png').read_bytes() == (image_root / 'val/class_2/0001.png').read_bytes()
    rng = np.random.default_rng(0)
    means = [np.mean([class_pattern_image(k, 4, 32, rng).reshape(-1, 3).mean(0) for _ in range(8)], axis=0)
             for k in range(4)]
    gaps = [np.abs(means[a] - means[b]).max() for a in range(4) for b in range(a + 1, 4)]
    assert min(gaps) > 20, 'every pair of classes differs clearly in mean colour'


def test_corrupt_or_missing_files_raise_naming_the_file(tmp_path, image_root):
    root = tmp_path / 'broken'
    (root / 'a').mkdir(parents=True)
    (root / 'a' / 'bad.png').write_bytes(b'not a png at all')
    dataset = ImageFolderDataset(str(root))
    with pytest.raises(OSError, match='bad.png'):
        dataset[0]
    with pytest.raises(FileNotFoundError, match='nowhere'):
        ImageFolderDataset(str(tmp_path / 'nowhere'))
    with pytest.raises(FileNotFoundError, match='class_9'):
        ImageFolderDataset(str(image_root / 'train'), classes=['class_0', 'class_9'])
    (tmp_path / 'empty' / 'a').mkdir(parents=True)
    with pytest.raises(ValueError, match='no images'):
        ImageFolderDataset(str(tmp_path / 'empty'))


def test_resize_transform_in_pipeline(image_root):
    dataset = ImageFolderDataset(str(image_root / 'val'), pipeline=[
        dict(type='LoadImage'), dict(type='ResizeImage', size=(8, 12)), dict(type='PackClsInputs')])
    assert dataset[0]['inputs'].shape == (3, 8, 12)
    with pytest.raises(ValueError, match='interpolation'):
        ResizeImage(8, interpolation='lanczos9')
