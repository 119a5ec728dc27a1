"""``DPTHeadLoRA``: VGGT's DPT head (depth + confidence), built so LoRA can wrap every one of its convolutions.

Names follow the official ``DPTHead`` (``norm``, ``projects.N``, ``resize_layers.N``, ``scratch.layerN_rn``,
``scratch.refinenetN.{resConfUnit1,resConfUnit2}.{conv1,conv2}``, ``scratch.refinenetN.out_conv``,
``scratch.output_conv1``, ``scratch.output_conv2.{0,2}``). Every ``Conv2d`` has ``groups=1``, so
:func:`opentad_lora.peft.apply_lora` can wrap it (LoRAConv); ``resize_layers.0`` and ``resize_layers.1`` are
``ConvTranspose2d``, which the LoRA core does not wrap: LoRA configs leave them frozen.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor, nn

from opentad_lora.registry import MODELS
from ..layers import sincos_1d

DEPTH_ACTIVATIONS = ('exp', 'inv_log', 'linear')
CONF_ACTIVATIONS = ('expp1', 'expp0')


def uv_position_embedding(channels: int, height: int, width: int, aspect_ratio: float, device: torch.device,
                          omega_0: float = 100.0) -> Tensor:
    """(channels, height, width) sin-cos embedding of a UV grid normalised by the image diagonal.

    The grid spans ``±aspect/diag`` horizontally and ``±1/diag`` vertically (cell centres), ``diag =
    sqrt(aspect^2 + 1)``; the first half of the channels encodes u, the second half v (VGGT/MoGe).
    """
    diag = (aspect_ratio ** 2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=torch.float64)
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=torch.float64)
    grid_v, grid_u = torch.meshgrid(v, u, indexing='ij')
    emb = torch.cat([sincos_1d(channels // 2, grid_u, omega_0), sincos_1d(channels // 2, grid_v, omega_0)], dim=1)
    return emb.reshape(height, width, channels).permute(2, 0, 1).to(device)


def activate(x: Tensor, activation: str) -> Tensor:
    """Depth activations: ``exp``, ``inv_log`` (sign(x)·(exp|x| − 1)) or ``linear``."""
    if activation == 'exp':
        return torch.exp(x)
    if activation == 'inv_log':
        return torch.sign(x) * torch.expm1(x.abs())
    if activation == 'linear':
        return x
    raise ValueError(f'Unknown activation {activation!r}; use one of {DEPTH_ACTIVATIONS}.')


def activate_confidence(x: Tensor, activation: str) -> Tensor:
    """Confidence activations: ``expp1`` (1 + exp, so confidence >= 1) or ``expp0`` (exp)."""
    if activation == 'expp1':
        return 1 + torch.exp(x)
    if activation == 'expp0':
        return torch.exp(x)
    raise ValueError(f'Unknown conf_activation {activation!r}; use one of {CONF_ACTIVATIONS}.')


class ResidualConvUnit(nn.Module):
    """``conv2(relu(conv1(relu(x)))) + relu(x)``.

    The skip adds the *activated* input: the official head applies an in-place ReLU to ``x`` before the skip, and
    official weights are trained with that behaviour, so it is reproduced here explicitly.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """RefineNet fusion: ``out_conv(upsample(rcu2(x + rcu1(skip))))`` (no skip input when ``has_residual=False``)."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Optional[Tensor] = None, size: Optional[Tuple[int, int]] = None) -> Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = size or (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.out_conv(F.interpolate(x, size=size, mode='bilinear', align_corners=True))


@MODELS.register_module()
class DPTHeadLoRA(BaseModule):
    """DPT head on four aggregator layers, predicting per-pixel depth and confidence.

    For each chosen layer the patch tokens are normed, reshaped to a feature map, projected by a 1x1 conv
    (``projects``), given a small UV position embedding and resized to 4x, 2x, 1x and 1/2x the patch grid
    (``resize_layers``); the RefineNet ``scratch`` fuses them coarse to fine, and ``output_conv2`` produces
    ``output_dim`` channels: the last is the confidence (``conf_activation``), the others the prediction.

    Args:
        dim_in: Width of the aggregator outputs (2C).
        patch_size: Patch size of the aggregator.
        output_dim: Output channels, confidence included (2 for depth).
        activation: Activation of the prediction channels (``'exp'`` for depth).
        conf_activation: Activation of the confidence channel (``'expp1'``).
        features: Width of the fusion path.
        out_channels: Widths of the four projections.
        intermediate_layer_idx: Which aggregator outputs feed the head.
        pos_embed: Add the UV position embedding (x0.1) after the projections and before the output convs.
        frames_chunk_size: Process at most this many views at once (memory); None or 0 for all.
        init_cfg: MMEngine init config.
    """

    def __init__(self, dim_in: int = 2048, patch_size: int = 14, output_dim: int = 2, activation: str = 'exp',
                 conf_activation: str = 'expp1', features: int = 256,
                 out_channels: Sequence[int] = (256, 512, 1024, 1024),
                 intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23), pos_embed: bool = True,
                 frames_chunk_size: Optional[int] = 8, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if len(out_channels) != 4 or len(intermediate_layer_idx) != 4:
            raise ValueError('DPTHeadLoRA needs exactly 4 out_channels and 4 intermediate_layer_idx.')
        activate(torch.zeros(1), activation)
        activate_confidence(torch.zeros(1), conf_activation)
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.intermediate_layer_idx = list(intermediate_layer_idx)
        self.pos_embed = pos_embed
        self.frames_chunk_size = frames_chunk_size
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, oc, 1) for oc in out_channels])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = nn.Module()
        for index, channels in enumerate(out_channels, 1):
            setattr(self.scratch, f'layer{index}_rn', nn.Conv2d(channels, features, 3, padding=1, bias=False))
        for index in range(1, 5):
            setattr(self.scratch, f'refinenet{index}', FeatureFusionBlock(features, has_residual=index != 4))
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, output_dim, 1))

    def _add_pos_embed(self, x: Tensor, aspect_ratio: float) -> Tensor:
        if not self.pos_embed:
            return x
        emb = uv_position_embedding(x.shape[1], x.shape[2], x.shape[3], aspect_ratio, x.device)
        return x + 0.1 * emb.to(x.dtype)

    def _fuse(self, features: List[Tensor]) -> Tensor:
        layers = [getattr(self.scratch, f'layer{i}_rn')(f) for i, f in enumerate(features, 1)]
        out = self.scratch.refinenet4(layers[3], size=layers[2].shape[-2:])
        out = self.scratch.refinenet3(out, layers[2], size=layers[1].shape[-2:])
        out = self.scratch.refinenet2(out, layers[1], size=layers[0].shape[-2:])
        out = self.scratch.refinenet1(out, layers[0])
        return self.scratch.output_conv1(out)

    def _forward_frames(self, tokens: List[Tensor], patch_start_idx: int, frames: slice, height: int,
                        width: int) -> Tuple[Tensor, Tensor]:
        rows, cols = height // self.patch_size, width // self.patch_size
        features = []
        for project, resize, layer in zip(self.projects, self.resize_layers, self.intermediate_layer_idx):
            x = tokens[layer][:, frames, patch_start_idx:]
            batch, views = x.shape[:2]
            x = self.norm(x.reshape(batch * views, rows * cols, -1))
            x = project(x.transpose(1, 2).reshape(batch * views, -1, rows, cols))
            features.append(resize(self._add_pos_embed(x, width / height)))
        out = F.interpolate(self._fuse(features), size=(rows * self.patch_size, cols * self.patch_size),
                            mode='bilinear', align_corners=True)
        out = self.scratch.output_conv2(self._add_pos_embed(out, width / height))
        out = out.permute(0, 2, 3, 1).reshape(batch, views, *out.shape[2:], out.shape[1])
        return activate(out[..., :-1], self.activation), activate_confidence(out[..., -1], self.conf_activation)

    def forward(self, tokens: List[Tensor], image_size: Tuple[int, int],
                patch_start_idx: int) -> Tuple[Tensor, Tensor]:
        """Predict from the aggregator outputs.

        Args:
            tokens: Aggregator outputs, each (B, S, P, dim_in) (only ``intermediate_layer_idx`` are read).
            image_size: Input ``(H, W)``.
            patch_start_idx: Index of the first patch token of a view.

        Returns:
            ``(pred, conf)``: (B, S, H, W, output_dim - 1) and (B, S, H, W).
        """
        height, width = image_size
        frames = tokens[self.intermediate_layer_idx[0]].shape[1]
        chunk = self.frames_chunk_size or frames
        outputs = [self._forward_frames(tokens, patch_start_idx, slice(start, start + chunk), height, width)
                   for start in range(0, frames, chunk)]
        return torch.cat([o[0] for o in outputs], dim=1), torch.cat([o[1] for o in outputs], dim=1)
