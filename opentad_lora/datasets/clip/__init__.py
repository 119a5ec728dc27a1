"""CLIP data: few-shot image folders (the classification family's reader), CSV lists, CLIP preprocessing."""
from .csv_dataset import CSVImageDataset
from .few_shot import FewShotImageFolder, apply_few_shot, few_shot_indices
from .synthetic import TINY_VOCAB_SIZE, class_prompt_names, write_synthetic_clip_data, write_tiny_bpe_vocab
from .transforms import CLIPCenterCrop, CLIPRandomResizedCrop

__all__ = ['CSVImageDataset', 'FewShotImageFolder', 'apply_few_shot', 'few_shot_indices', 'CLIPCenterCrop',
           'CLIPRandomResizedCrop', 'TINY_VOCAB_SIZE', 'class_prompt_names', 'write_synthetic_clip_data',
           'write_tiny_bpe_vocab']
