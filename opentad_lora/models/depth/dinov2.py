"""The DINOv2 ViT with register tokens that VGGT uses as its patch embedding (``aggregator.patch_embed``).

Module and parameter names are DINOv2's (``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``,
``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``),
so DINOv2 and VGGT checkpoints load unchanged.
"""
from functools import partial
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from ..layers import PatchEmbed, TransformerBlock, checkpoint_seq, resize_pos_embed

# DINOv2 sizes with registers (ViT-g uses a SwiGLU MLP and is not provided).
DINOV2_PRESETS: Dict[str, Dict[str, int]] = {
    'dinov2_vits14_reg': dict(embed_dim=384, depth=12, num_heads=6),
    'dinov2_vitb14_reg': dict(embed_dim=768, depth=12, num_heads=12),
    'dinov2_vitl14_reg': dict(embed_dim=1024, depth=24, num_heads=16),
}


class DinoV2PatchEmbed(nn.Module):
    """DINOv2 ViT returning its final-normed patch tokens (``x_norm_patchtokens``).

    Args:
        img_size: Square image size the learned ``pos_embed`` is stored for; other sizes resize it as VGGT's
            DINOv2 does (bicubic with anti-aliasing, to the exact token grid, no scale-factor offset).
        patch_size: Patch size.
        embed_dim: Token width.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP width ratio.
        num_register_tokens: Register tokens after the class token.
        init_values: LayerScale init (DINOv2 checkpoints use 1.0 here).
        with_cp: Activation checkpointing of the blocks while training.
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_register_tokens: int = 4,
                 init_values: float = 1.0, with_cp: bool = False) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.grid_size: Tuple[int, int] = self.patch_embed.grid_size
        self.num_register_tokens = num_register_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)  # kept for checkpoints
        self.blocks = nn.ModuleList([
            TransformerBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=True, init_values=init_values,
                             norm_layer=norm_layer) for _ in range(depth)
        ])
        self.norm = norm_layer(embed_dim)
        self.with_cp = with_cp
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) normalised images -> (N, H/p * W/p, C) patch tokens after the final norm."""
        tokens = self.patch_embed(images)
        grid = self.patch_embed.output_grid(tuple(images.shape[-2:]))
        pos_embed = resize_pos_embed(self.pos_embed, self.grid_size, grid, num_prefix_tokens=1, antialias=True)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + pos_embed
        tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(len(tokens), -1, -1), tokens[:, 1:]], dim=1)
        tokens = checkpoint_seq(self.blocks, tokens, enabled=self.with_cp and self.training)
        return self.norm(tokens)[:, 1 + self.num_register_tokens:]
