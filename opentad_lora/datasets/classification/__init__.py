"""Image classification data: image folders of real image files, OpenCV transforms, a synthetic writer."""
from .image_folder import IMG_EXTENSIONS, ImageFolderDataset
from .synthetic import class_pattern_image, write_synthetic_image_folder
from .transforms import LoadImage, PackClsInputs, ResizeImage, read_image

__all__ = [
    'IMG_EXTENSIONS', 'ImageFolderDataset', 'class_pattern_image', 'write_synthetic_image_folder', 'LoadImage',
    'PackClsInputs', 'ResizeImage', 'read_image',
]
