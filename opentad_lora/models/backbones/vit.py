"""Generic Vision Transformer with timm's parameter names, so timm/mmpretrain/ViTPose weights load directly.

Names: ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}``, ``norm``. LoRA targets ``qkv``/``proj``/``fc1``/``fc2`` therefore name the same layers as in timm and
PEFT. The pretrained file is loaded in ``__init__`` (not in ``init_weights``) because LoRA checkpoints hold only the
trainable tensors: the frozen base must be complete as soon as the model is built (``tools/test.py``, ``--resume``).
"""
from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor, nn

from opentad_lora.engine.checkpoint import load_checkpoint_file
from opentad_lora.registry import MODELS
from ..layers import PatchEmbed, TransformerBlock, checkpoint_seq, drop_path_rates, sincos_2d, to_2tuple
from .vit_pretrained import adapt_pos_embed, extract_state_dict, rename_vit_keys

_DEFAULTS: Dict[str, Any] = dict(
    img_size=224, patch_size=16, patch_padding=0, in_chans=3, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
    qkv_bias=True, qk_norm=False, init_values=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
    use_cls_token=True, pos_embed='learned', norm_eps=1e-6, out_type='cls')


@MODELS.register_module()
class VisionTransformer(BaseModule):
    """ViT (Dosovitskiy et al., 2021) with presets, fused-qkv SDPA attention and optional activation checkpointing.

    Every architecture argument defaults to None, meaning "from ``arch`` (if given), else the ViT-B/16 default";
    an argument given explicitly always wins over the preset.

    Args:
        arch: Preset name from :attr:`arch_zoo` (``'tiny'``, ``'small'``, ``'base'``, ``'large'``, ``'huge'``,
            ``'hamer-huge'`` = HaMeR/ViTPose ViT-H: 256x192 input, patch 16 with padding 2, no class token,
            feature-map output) or None.
        img_size: Input size, int or (H, W); the position embedding is built for it (other sizes are interpolated).
        patch_size: Patch size of the ``patch_embed.proj`` convolution.
        patch_padding: Zero padding of that convolution (2 for ViTPose/HaMeR).
        in_chans: Input channels.
        embed_dim: Token width.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        qkv_bias: Bias on ``qkv``.
        qk_norm: Per-head query/key LayerNorm.
        init_values: LayerScale init (None = no LayerScale).
        drop_rate: Dropout on the embeddings and after the projections.
        attn_drop_rate: Dropout on attention weights.
        drop_path_rate: Stochastic depth of the last block (rising linearly from 0 over the blocks).
        use_cls_token: Prepend a learned class token.
        pos_embed: ``'learned'`` (a parameter) or ``'sincos'`` (fixed 2D sin-cos, a non-persistent buffer).
        norm_eps: LayerNorm epsilon.
        with_cp: Checkpoint each block's activations in training (non-reentrant; same outputs and gradients).
        out_type: ``'cls'`` (B, C): class token, or the mean of the tokens without one; ``'tokens'`` (B, N, C): all
            tokens after the final norm; ``'featmap'`` (B, C, rows, cols): the patch tokens as a map.
        pretrained: Path of a checkpoint to load in ``__init__`` (see :mod:`.vit_pretrained` for the layouts).
        pretrained_prefix: Key prefix of the backbone in that file (None: ``'backbone.'`` when present).
        init_cfg: MMEngine init config (applied only by ``init_weights``; not combinable with ``pretrained``).
    """

    arch_zoo: Dict[str, Dict[str, Any]] = {
        'tiny': dict(embed_dim=192, depth=12, num_heads=3),
        'small': dict(embed_dim=384, depth=12, num_heads=6),
        'base': dict(embed_dim=768, depth=12, num_heads=12),
        'large': dict(embed_dim=1024, depth=24, num_heads=16),
        'huge': dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
        'hamer-huge': dict(img_size=(256, 192), patch_size=16, patch_padding=2, embed_dim=1280, depth=32,
                           num_heads=16, drop_path_rate=0.55, use_cls_token=False, out_type='featmap'),
    }
    out_types = ('cls', 'tokens', 'featmap')

    def __init__(self, arch: Optional[str] = None, img_size: Union[int, Sequence[int], None] = None,
                 patch_size: Optional[int] = None, patch_padding: Optional[int] = None,
                 in_chans: Optional[int] = None, embed_dim: Optional[int] = None, depth: Optional[int] = None,
                 num_heads: Optional[int] = None, mlp_ratio: Optional[float] = None, qkv_bias: Optional[bool] = None,
                 qk_norm: Optional[bool] = None, init_values: Optional[float] = None,
                 drop_rate: Optional[float] = None, attn_drop_rate: Optional[float] = None,
                 drop_path_rate: Optional[float] = None, use_cls_token: Optional[bool] = None,
                 pos_embed: Optional[str] = None, norm_eps: Optional[float] = None, with_cp: bool = False,
                 out_type: Optional[str] = None, pretrained: Optional[str] = None,
                 pretrained_prefix: Optional[str] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        given = {k: v for k, v in locals().items() if k in _DEFAULTS and v is not None}
        cfg = self.resolve_arch(arch, **given)
        if cfg['out_type'] not in self.out_types:
            raise ValueError(f'out_type must be one of {self.out_types}, got {cfg["out_type"]!r}.')
        if cfg['pos_embed'] not in ('learned', 'sincos'):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {cfg['pos_embed']!r}.")
        if pretrained and init_cfg:
            raise ValueError('Give either pretrained= (loaded at construction) or init_cfg, not both.')
        self.arch_settings = cfg
        self.embed_dim = cfg['embed_dim']
        self.out_type = cfg['out_type']
        self.with_cp = with_cp
        self.num_prefix_tokens = 1 if cfg['use_cls_token'] else 0
        norm_layer = partial(nn.LayerNorm, eps=cfg['norm_eps'])

        self.patch_embed = PatchEmbed(cfg['img_size'], cfg['patch_size'], cfg['in_chans'], self.embed_dim,
                                      padding=cfg['patch_padding'])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim)) if cfg['use_cls_token'] else None
        num_positions = self.num_prefix_tokens + self.patch_embed.num_patches
        if cfg['pos_embed'] == 'learned':
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, self.embed_dim))
        else:
            self.register_buffer('pos_embed', self._sincos(self.patch_embed.grid_size), persistent=False)
        self.pos_drop = nn.Dropout(cfg['drop_rate'])
        self.blocks = nn.ModuleList([
            TransformerBlock(self.embed_dim, cfg['num_heads'], mlp_ratio=cfg['mlp_ratio'], qkv_bias=cfg['qkv_bias'],
                             qk_norm=cfg['qk_norm'], proj_drop=cfg['drop_rate'], attn_drop=cfg['attn_drop_rate'],
                             init_values=cfg['init_values'], drop_path=rate, norm_layer=norm_layer)
            for rate in drop_path_rates(cfg['drop_path_rate'], cfg['depth'])
        ])
        self.norm = norm_layer(self.embed_dim)
        self._init_parameters()
        if pretrained:
            self.load_pretrained(pretrained, pretrained_prefix)

    @classmethod
    def resolve_arch(cls, arch: Optional[str] = None, **given: Any) -> Dict[str, Any]:
        """Settings of ``arch`` (defaults, then the preset, then the explicitly ``given`` values)."""
        if arch is not None and arch not in cls.arch_zoo:
            raise ValueError(f'Unknown ViT arch {arch!r}; choose from {sorted(cls.arch_zoo)}.')
        unknown = set(given) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f'Unknown ViT settings {sorted(unknown)}.')
        return {**_DEFAULTS, **cls.arch_zoo.get(arch, {}), **given}

    def _sincos(self, grid_size: Tuple[int, int]) -> Tensor:
        pos = sincos_2d(self.embed_dim, grid_size)[None]
        if self.num_prefix_tokens:
            pos = torch.cat([pos.new_zeros(1, self.num_prefix_tokens, self.embed_dim), pos], dim=1)
        return pos

    def _init_parameters(self) -> None:
        """timm's ViT init: truncated normal (std .02) for linears and the learned pos_embed, zero biases."""
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def load_pretrained(self, path: str, prefix: Optional[str] = None) -> None:
        """Load the backbone weights of the checkpoint at ``path``; every parameter of the model must be in it.

        Raises:
            KeyError: The file lacks some of the model's tensors (a frozen base must never stay random).
            RuntimeError: A tensor has the wrong shape (the message names the file).
        """
        state = rename_vit_keys(extract_state_dict(load_checkpoint_file(path), prefix))
        if isinstance(self.pos_embed, nn.Parameter):
            if 'pos_embed' in state:
                state['pos_embed'] = adapt_pos_embed(state['pos_embed'], self.num_prefix_tokens,
                                                     self.patch_embed.grid_size)
        else:
            state.pop('pos_embed', None)
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise RuntimeError(f'Pretrained file {path} does not fit this VisionTransformer: {err}') from err
        if missing:
            raise KeyError(f'Pretrained file {path} lacks {len(missing)} backbone tensors, e.g. {missing[:5]}.')
        if unexpected:
            print_log(f'Pretrained file {path}: ignored {len(unexpected)} keys that are not backbone tensors, '
                      f'e.g. {unexpected[:5]}', logger='current')

    def _pos_embed(self, grid_size: Tuple[int, int]) -> Tensor:
        """The position embedding for a token grid, interpolated (learned) or recomputed (sin-cos) if needed."""
        if tuple(grid_size) == self.patch_embed.grid_size:
            return self.pos_embed
        if isinstance(self.pos_embed, nn.Parameter):
            return adapt_pos_embed(self.pos_embed, self.num_prefix_tokens, grid_size, self.patch_embed.grid_size)
        return self._sincos(grid_size).to(self.pos_embed)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> features in the layout of ``out_type``."""
        grid_size = self.patch_embed.output_grid(to_2tuple(x.shape[-2:]))
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self._pos_embed(grid_size))
        x = self.norm(checkpoint_seq(self.blocks, x, enabled=self.with_cp))
        if self.out_type == 'tokens':
            return x
        if self.out_type == 'cls':
            return x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        patches = x[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(x.shape[0], self.embed_dim, *grid_size)
