"""Image classification dataset read from a folder of class subfolders (``root/<class>/<image>``)."""
from pathlib import Path
from typing import List, Optional, Sequence

from mmengine.dataset import BaseDataset

from opentad_lora.registry import DATASETS, TRANSFORMS

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


@DATASETS.register_module()
class ImageFolderDataset(BaseDataset):
    """``data_root/<class name>/<image file>``, one subfolder per class (torchvision's ImageFolder layout).

    Labels are the indices of the class names in ``classes`` (default: the sorted subfolder names), and
    ``metainfo['classes']`` holds that order. Images are read by the pipeline (``LoadImage``), so a corrupt or
    missing file raises an error naming it when its sample is fetched.

    Args:
        data_root: The folder holding the class subfolders.
        classes: Class names in label order (each must be a subfolder); None = every subfolder, sorted.
        extensions: Accepted file suffixes (case-insensitive).
        pipeline: Transforms; default reads, then packs the image (``LoadImage``, ``PackClsInputs``).
        **kwargs: Passed to :class:`mmengine.dataset.BaseDataset` (``indices``, ``test_mode``, ``lazy_init``...).
    """

    def __init__(self, data_root: str, classes: Optional[Sequence[str]] = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS, pipeline: Optional[Sequence[dict]] = None,
                 **kwargs) -> None:
        self.classes_arg = tuple(classes) if classes else None
        self.extensions = tuple(e.lower() for e in extensions)
        if pipeline is None:
            pipeline = [dict(type='LoadImage'), dict(type='PackClsInputs')]
        # Built here, in our registry, so the dataset also works outside a Runner (no default scope set).
        pipeline = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline]
        super().__init__(data_root=data_root, pipeline=pipeline, **kwargs)

    def load_data_list(self) -> List[dict]:
        """One ``dict(img_path, gt_label)`` per image file, class by class, files sorted by name."""
        root = Path(self.data_root)
        if not root.is_dir():
            raise FileNotFoundError(f'Image folder {root} does not exist.')
        classes = self.classes_arg or tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
        if not classes:
            raise ValueError(f'Image folder {root} has no class subfolders.')
        data_list = []
        for label, name in enumerate(classes):
            folder = root / name
            if not folder.is_dir():
                raise FileNotFoundError(f'Class folder {folder} does not exist.')
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in self.extensions)
            data_list.extend(dict(img_path=str(p), gt_label=label) for p in files)
        if not data_list:
            raise ValueError(f'Image folder {root} has no images with suffixes {self.extensions}.')
        self._metainfo['classes'] = classes
        return data_list
