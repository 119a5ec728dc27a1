"""``TADDataPreprocessor``: batch uint8 NCTHW clips, normalise them, move everything to the model's device."""
from typing import Optional, Sequence

import torch
from mmengine.model import BaseDataPreprocessor

from opentad_lora.registry import MODELS


@MODELS.register_module()
class TADDataPreprocessor(BaseDataPreprocessor):
    """Stack ``inputs`` (list of ``(3, T, H, W)`` uint8) into ``(B, 3, T, H, W)`` float, ``(x - mean) / std``.

    Args:
        mean: Per-channel mean in pixel units (RGB), default ImageNet's as VideoMAE uses.
        std: Per-channel std in pixel units.
    """

    def __init__(self, mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375), non_blocking: Optional[bool] = False) -> None:
        super().__init__(non_blocking)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f'mean and std need 3 (RGB) values, got {mean} and {std}')
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1, 1), False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1, 1), False)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        if isinstance(inputs, (list, tuple)):
            inputs = torch.stack(list(inputs))
        if inputs.dim() != 5 or inputs.shape[1] != 3:
            raise ValueError(f'TADDataPreprocessor expects (B, 3, T, H, W) clips, got shape {tuple(inputs.shape)}')
        inputs = (inputs.float() - self.mean) / self.std
        return dict(inputs=inputs, data_samples=data.get('data_samples'))
