"""``VGGTAggregator``: VGGT's alternating frame/global attention over the patch tokens of several views."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from opentad_lora.registry import MODELS
from ..layers import PatchEmbed, checkpoint_call
from .blocks import VGGTBlock
from .dinov2 import DINOV2_PRESETS, DinoV2PatchEmbed
from .rope import RotaryPositionEmbedding2D, patch_positions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def first_and_rest(token: Tensor, batch: int, frames: int) -> Tensor:
    """Expand a (1, 2, X, C) token pair to (batch * frames, X, C): slot 0 for frame 0, slot 1 for the others.

    This is how VGGT marks the first view as the reference frame of the whole sequence.
    """
    first = token[:, :1].expand(batch, 1, *token.shape[2:])
    rest = token[:, 1:].expand(batch, frames - 1, *token.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(batch * frames, *token.shape[2:])


@MODELS.register_module()
class VGGTAggregator(BaseModule):
    """VGGT's aggregator: patch embedding, camera + register tokens, alternating frame/global attention.

    Per view the tokens are ``[camera (1), registers (num_register_tokens), patches]``. Frame blocks attend within
    each view (B*S, P, C); global blocks attend across all views (B, S*P, C). Every pair of blocks contributes one
    intermediate output ``concat(frame_out, global_out)`` of shape (B, S, P, 2C).

    Module names follow the official code (``patch_embed``, ``camera_token``, ``register_token``,
    ``frame_blocks.N``, ``global_blocks.N``), so LoRA targets such as ``'aggregator.frame_blocks.12-23.*.qkv'``
    and official checkpoints apply unchanged.

    Args:
        img_size: Image size the patch embedding's position table is stored for.
        patch_size: Patch size (14).
        embed_dim: Token width C.
        depth: Number of frame blocks (= number of global blocks).
        num_heads: Attention heads.
        mlp_ratio: MLP hidden ratio.
        num_register_tokens: Register tokens per view.
        qkv_bias: Bias on ``qkv``.
        qk_norm: QK-norm in the blocks.
        rope_freq: RoPE-2D base frequency; <= 0 disables RoPE.
        init_values: LayerScale init of the blocks.
        patch_embed: ``'conv'`` (a strided conv), a DINOv2 preset name (``'dinov2_vitl14_reg'``...) or a dict of
            :class:`DinoV2PatchEmbed` arguments (a small DINOv2 for tests).
        aa_order: Order of the attention types within a group.
        aa_block_size: Blocks of one type per group.
        with_cp: Activation checkpointing of every block (and the DINOv2 blocks) while training.
        init_cfg: MMEngine init config.
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_register_tokens: int = 4, qkv_bias: bool = True,
                 qk_norm: bool = True, rope_freq: float = 100, init_values: float = 0.01,
                 patch_embed: Union[str, Dict] = 'dinov2_vitl14_reg', aa_order: Sequence[str] = ('frame', 'global'),
                 aa_block_size: int = 1, with_cp: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if depth % aa_block_size:
            raise ValueError(f'depth ({depth}) must be divisible by aa_block_size ({aa_block_size}).')
        if sorted(aa_order) != ['frame', 'global']:
            raise ValueError(f"aa_order must hold 'frame' and 'global' once each, got {list(aa_order)}.")
        self.patch_size = patch_size
        self.patch_embed = self._build_patch_embed(patch_embed, img_size, patch_size, embed_dim, num_register_tokens,
                                                   with_cp)
        self.rope = RotaryPositionEmbedding2D(rope_freq) if rope_freq > 0 else None
        block = dict(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm,
                     init_values=init_values, rope=self.rope)
        self.frame_blocks = nn.ModuleList([VGGTBlock(**block) for _ in range(depth)])
        self.global_blocks = nn.ModuleList([VGGTBlock(**block) for _ in range(depth)])
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim) * 1e-6)
        self.patch_start_idx = 1 + num_register_tokens
        self.depth = depth
        self.embed_dim = embed_dim
        self.aa_order = tuple(aa_order)
        self.aa_block_size = aa_block_size
        self.with_cp = with_cp
        self.register_buffer('image_mean', torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer('image_std', torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    @staticmethod
    def _build_patch_embed(spec: Union[str, Dict], img_size: int, patch_size: int, embed_dim: int,
                           num_register_tokens: int, with_cp: bool) -> nn.Module:
        if spec == 'conv':
            return PatchEmbed(img_size, patch_size, 3, embed_dim)
        if isinstance(spec, str):
            if spec not in DINOV2_PRESETS:
                raise ValueError(f"Unknown patch_embed {spec!r}; use 'conv', {sorted(DINOV2_PRESETS)} or a dict.")
            spec = DINOV2_PRESETS[spec]
        spec = dict(img_size=img_size, patch_size=patch_size, num_register_tokens=num_register_tokens,
                    with_cp=with_cp, **spec)
        if spec.setdefault('embed_dim', embed_dim) != embed_dim:
            raise ValueError(f'The DINOv2 patch embedding width {spec["embed_dim"]} must equal embed_dim {embed_dim}.')
        return DinoV2PatchEmbed(**spec)

    @property
    def out_dim(self) -> int:
        """Width of each intermediate output (frame and global tokens concatenated)."""
        return 2 * self.embed_dim

    def forward(self, images: Tensor,
                out_indices: Optional[Sequence[int]] = None) -> Tuple[List[Optional[Tensor]], int]:
        """Aggregate a batch of view sequences.

        Args:
            images: (B, S, 3, H, W) in [0, 1]; H and W multiples of the patch size.
            out_indices: Intermediate outputs to keep (negative indices allowed); the others are None, which saves
                memory at full size. None keeps all ``depth / aa_block_size * aa_block_size`` of them.

        Returns:
            The list of (B, S, P, 2C) intermediate outputs and ``patch_start_idx`` (first patch token of a view).
        """
        batch, frames, channels, height, width = images.shape
        if channels != 3 or height % self.patch_size or width % self.patch_size:
            raise ValueError(f'Expected (B, S, 3, H, W) with H, W multiples of {self.patch_size}, got '
                             f'{tuple(images.shape)}.')
        images = ((images - self.image_mean) / self.image_std).reshape(batch * frames, 3, height, width)
        patches = self.patch_embed(images)
        tokens = torch.cat([first_and_rest(self.camera_token, batch, frames),
                            first_and_rest(self.register_token, batch, frames), patches], dim=1)
        num_tokens, dim = tokens.shape[1:]
        pos = None
        if self.rope is not None:
            pos = patch_positions(batch * frames, height // self.patch_size, width // self.patch_size,
                                  self.patch_start_idx, images.device)
        keep = None if out_indices is None else {i % self.depth for i in out_indices}
        outputs: List[Optional[Tensor]] = []
        for group in range(self.depth // self.aa_block_size):
            per_type = {}
            for attn_type in self.aa_order:
                blocks = self.frame_blocks if attn_type == 'frame' else self.global_blocks
                shape = (batch * frames, num_tokens, dim) if attn_type == 'frame' else (batch, frames * num_tokens, dim)
                tokens = tokens.reshape(shape)
                block_pos = None if pos is None else pos.reshape(*shape[:2], 2)
                per_type[attn_type] = []
                for index in range(group * self.aa_block_size, (group + 1) * self.aa_block_size):
                    tokens = checkpoint_call(blocks[index], tokens, block_pos, enabled=self.with_cp and self.training)
                    per_type[attn_type].append(tokens.reshape(batch, frames, num_tokens, dim))
            for offset in range(self.aa_block_size):
                index = group * self.aa_block_size + offset
                wanted = keep is None or index in keep
                outputs.append(torch.cat([per_type['frame'][offset], per_type['global'][offset]], dim=-1)
                               if wanted else None)
        return outputs, self.patch_start_idx
