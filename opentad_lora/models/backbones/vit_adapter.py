"""AdaTAD's video backbone: a frozen VideoMAE ViT run over a long window in chunks, with trainable adapters.

``VisionTransformerAdapter`` is AdaTAD's baseline (only the adapters train); ``VisionTransformerQLoRA`` adds LoRA on
``qkv``/``proj``/``fc1``/``fc2`` through :func:`opentad_lora.peft.apply_lora`, optionally on 4/8-bit frozen bases.

Data flow for a window of T frames: a Conv3d tubelet embedding gives T/2 time steps; the window is cut into
T/num_frames chunks that run through the ViT as one batch (attention never crosses a chunk), the adapters'
temporal convolution runs over the whole window, tokens are averaged over space and the chunks are joined again in
time: (B, 3, T, H, W) -> (B, C, T / tubelet_size).
"""
from typing import Any, List, Mapping, Optional, Sequence

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from opentad_lora.peft import apply_lora
from opentad_lora.registry import MODELS
from ..layers import checkpoint_call, drop_path_rates
from ..layers.compressed_checkpoint import STORAGES
from .tad_adapters import PlainAdapter, TemporalAdapter
from .video_vit import ARCHS, TubeletEmbed, VideoMAEBlock, resize_video_pos_embed, videomae_sincos_table
from .videomae_pretrained import convert_videomae_state_dict, read_videomae_file

ADAPTER_PATTERN = r're:(.*\.)?adapter(\..*)?'  # LoRA never wraps the adapters' own linears
FINAL_NORMS = (None, 'norm', 'fc_norm')
_CONVERTER = 'tools/model_converters/videomae_to_opentad_lora.py'


def is_adapter_param(name: str) -> bool:
    """Whether a parameter name belongs to an AdaTAD adapter (a module named ``adapter``)."""
    return 'adapter' in name.split('.')


@MODELS.register_module()
class VisionTransformerAdapter(nn.Module):
    """Frozen VideoMAE ViT over a long window in chunks, with AdaTAD adapters after the blocks in ``adapter_index``.

    Args:
        img_size: Frame size of pretraining; sets the position table (resampled to the actual frame size).
        patch_size: Spatial patch size.
        in_channels: Input channels.
        embed_dims: Token width (the output channels).
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dims``.
        qkv_bias: Learned q/v biases (VideoMAE).
        num_frames: Frames per chunk, i.e. per ViT clip (VideoMAE: 16).
        tubelet_size: Frames per token.
        drop_path_rate: Stochastic depth of the last block (linear from 0).
        norm_cfg: ``dict(type='LN', eps=...)``; only LayerNorm is supported.
        with_cp: Checkpoint each block (with its adapter), non-reentrant, so activation memory is one block's.
        checkpoint_storage: The memory-saving mode for long windows: ``'bf16'`` or ``'fp8'`` stores each block's
            checkpointed input compressed (forward stays exact; backward recomputes from the compressed input, see
            :mod:`opentad_lora.models.layers.compressed_checkpoint`). None (default) stores it exactly.
        total_frames: Frames of the window the model is built for (checked in forward); None accepts any multiple
            of ``num_frames``.
        adapter_index: Blocks followed by an adapter; None = all, ``[]`` = none (the plain frozen ViT).
        adapter_mlp_ratio: Adapter bottleneck width as a fraction of ``embed_dims``.
        use_plain_adapter: Adapters without the temporal convolution.
        pretrained: VideoMAE-family checkpoint as its users keep it (mmaction2/OpenTAD, VideoMAE, VideoMAE-v2 or
            ours; see :mod:`.videomae_pretrained`), loaded here, before anything is quantized or wrapped.
        arch: ``'small'|'base'|'large'|'huge'|'giant'`` presets; they override embed_dims, depth, num_heads,
            mlp_ratio and patch_size.
        init_values: LayerScale init of checkpoints trained with it (VideoMAE ``init_values``); None = off.
        use_learnable_pos_emb: A learned position table (loaded from ``pretrained``) instead of the fixed one.
        final_norm: None (AdaTAD: raw tokens), ``'norm'`` (LayerNorm on tokens, the pretraining encoder's) or
            ``'fc_norm'`` (LayerNorm after spatial pooling, the fine-tuned model's).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_channels: int = 3, embed_dims: int = 384,
                 depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4, qkv_bias: bool = True,
                 num_frames: int = 16, tubelet_size: int = 2, drop_path_rate: float = 0.1,
                 norm_cfg: Optional[Mapping[str, Any]] = None, with_cp: bool = True,
                 checkpoint_storage: Optional[str] = None,
                 total_frames: Optional[int] = 768, adapter_index: Optional[Sequence[int]] = None,
                 adapter_mlp_ratio: float = 0.25, use_plain_adapter: bool = False, pretrained: Optional[str] = None,
                 arch: Optional[str] = None, init_values: Optional[float] = None,
                 use_learnable_pos_emb: bool = False, final_norm: Optional[str] = None) -> None:
        super().__init__()
        if arch is not None:
            if arch not in ARCHS:
                raise ValueError(f'Unknown arch {arch!r}; choose one of {sorted(ARCHS)}.')
            embed_dims, depth, num_heads, mlp_ratio, patch_size = (
                ARCHS[arch][k] for k in ('embed_dims', 'depth', 'num_heads', 'mlp_ratio', 'patch_size'))
        if num_frames % tubelet_size or (total_frames is not None and total_frames % num_frames):
            raise ValueError(f'num_frames={num_frames} must be a multiple of tubelet_size={tubelet_size} and '
                             f'total_frames={total_frames} a multiple of num_frames.')
        if final_norm not in FINAL_NORMS:
            raise ValueError(f'final_norm must be one of {FINAL_NORMS}, got {final_norm!r}.')
        adapter_index = list(range(depth)) if adapter_index is None else [int(i) for i in adapter_index]
        if any(not 0 <= i < depth for i in adapter_index):
            raise ValueError(f'adapter_index {adapter_index} has blocks outside 0..{depth - 1}.')
        norm_layer = self._norm_layer(norm_cfg or dict(type='LN', eps=1e-6))

        self.embed_dims, self.patch_size, self.in_channels = embed_dims, patch_size, in_channels
        self.num_frames, self.tubelet_size, self.total_frames = num_frames, tubelet_size, total_frames
        if checkpoint_storage is not None and (checkpoint_storage not in STORAGES or not with_cp):
            raise ValueError(f'checkpoint_storage={checkpoint_storage!r} needs with_cp=True and one of {STORAGES}.')
        self.with_cp, self.checkpoint_storage = with_cp, checkpoint_storage
        self.pretrain_grid = (img_size // patch_size, img_size // patch_size)
        self.chunk_steps = num_frames // tubelet_size
        self.patch_embed = TubeletEmbed(in_channels, embed_dims, patch_size, tubelet_size)
        num_tokens = self.chunk_steps * self.pretrain_grid[0] * self.pretrain_grid[1]
        if use_learnable_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dims))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_buffer('pos_embed', videomae_sincos_table(num_tokens, embed_dims), persistent=False)
        adapter_cls = PlainAdapter if use_plain_adapter else TemporalAdapter
        self.blocks = nn.ModuleList([
            VideoMAEBlock(embed_dims, num_heads, mlp_ratio, qkv_bias, rate, init_values, norm_layer,
                          adapter=adapter_cls(embed_dims, adapter_mlp_ratio) if i in adapter_index else None)
            for i, rate in enumerate(drop_path_rates(drop_path_rate, depth))
        ])
        self.norm = norm_layer(embed_dims) if final_norm == 'norm' else nn.Identity()
        self.fc_norm = norm_layer(embed_dims) if final_norm == 'fc_norm' else nn.Identity()
        self._init_vit_weights()
        if pretrained:
            self.load_pretrained(pretrained)
        for name, param in self.named_parameters():
            param.requires_grad_(is_adapter_param(name))
        vit = sum(p.numel() for n, p in self.named_parameters() if not is_adapter_param(n))
        adapters = sum(p.numel() for n, p in self.named_parameters() if is_adapter_param(n))
        print_log(f'{type(self).__name__}: ViT {vit:,} params (frozen), adapters {adapters:,} '
                  f'({100.0 * adapters / max(vit, 1):.1f}%)', logger='current')

    @staticmethod
    def _norm_layer(norm_cfg: Mapping[str, Any]):
        cfg = dict(norm_cfg)
        if cfg.pop('type', 'LN') not in ('LN', 'LayerNorm'):
            raise ValueError(f'norm_cfg {dict(norm_cfg)} is not supported; only type="LN" is.')
        eps = cfg.pop('eps', 1e-6)
        if cfg:
            raise ValueError(f'norm_cfg has unsupported keys {sorted(cfg)}; only "type" and "eps" are accepted.')
        return lambda dim: nn.LayerNorm(dim, eps=eps)

    def _init_vit_weights(self) -> None:
        """VideoMAE's init of the ViT linears (truncated normal 0.02, zero bias); adapters keep their own."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not is_adapter_param(name):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def load_pretrained(self, path: str) -> None:
        """Load ViT weights (and adapters, if the file has them) from a VideoMAE-family checkpoint.

        Files in the mmaction2/OpenTAD, MCG-NJU VideoMAE, VideoMAE-v2 or our layout are converted in memory
        (:mod:`.videomae_pretrained`) and one line says what was renamed and dropped. Every ViT tensor must be in
        the file. Keys of a final norm this model does not use are skipped; any other foreign key, a missing key or
        a shape mismatch raises an error naming the file and the keys.
        """
        conversion = convert_videomae_state_dict(read_videomae_file(path))
        state = conversion.state_dict
        own = self.state_dict()
        if 'pos_embed' in state and 'pos_embed' not in own:
            raise ValueError(f'{path} has a learned pos_embed: build the backbone with use_learnable_pos_emb=True.')
        unused = sorted(k for k in state if k not in own and k.split('.')[0] in ('norm', 'fc_norm'))
        unknown = conversion.unmapped + sorted(k for k in state if k not in own and k not in unused)
        missing = sorted(k for k in own if k not in state and not is_adapter_param(k))
        wrong = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                 for k in own if k in state and state[k].shape != own[k].shape]
        problems = [f'{label} {keys[:8]}{" ..." if len(keys) > 8 else ""}'
                    for label, keys in (('unknown keys', unknown), ('missing keys', missing),
                                        ('shape mismatches', wrong)) if keys]
        if problems:
            raise ValueError(f'pretrained checkpoint {path} does not fit {type(self).__name__}: '
                             f'{"; ".join(problems)}. Check embed_dims/depth/patch_size/init_values against the '
                             f'file ({_CONVERTER} prints the arguments it needs).')
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        print_log(f'pretrained {path}: {conversion.summary()}'
                  + (f'; skipped the unused final norm {unused}' if unused else ''), logger='current')

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}.')
        frames, height, width = x.shape[2:]
        if frames % self.num_frames or (self.total_frames is not None and frames != self.total_frames):
            raise ValueError(f'{type(self).__name__} got a window of {frames} frames; it needs '
                             f'{self.total_frames or "a multiple of num_frames"} (chunks of {self.num_frames}).')
        if min(height, width) < self.patch_size:
            raise ValueError(f'frames of {height}x{width} are smaller than one patch ({self.patch_size}).')

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) normalised frames -> (B, embed_dims, T // tubelet_size) features."""
        self._check_input(x)
        batch = x.shape[0]
        tokens = self.patch_embed(x)  # (B, C, steps, rows, cols)
        channels, steps, rows, cols = tokens.shape[1:]
        tokens = tokens.permute(0, 2, 3, 4, 1).reshape(-1, self.chunk_steps * rows * cols, channels)
        pos_embed = resize_video_pos_embed(self.pos_embed, self.chunk_steps, self.pretrain_grid, (rows, cols))
        tokens = tokens + pos_embed.to(tokens.dtype)
        grid = (steps, rows, cols)
        for block in self.blocks:
            tokens = checkpoint_call(block, tokens, grid, enabled=self.with_cp, storage=self.checkpoint_storage)
        feats = self.norm(tokens).reshape(batch, steps, rows * cols, channels).mean(2)
        return self.fc_norm(feats).transpose(1, 2)


@MODELS.register_module()
class VisionTransformerQLoRA(VisionTransformerAdapter):
    """:class:`VisionTransformerAdapter` plus LoRA on the frozen ViT's linears, optionally on 4/8-bit bases.

    The pretrained weights are loaded first, then :func:`opentad_lora.peft.apply_lora` wraps (and quantizes) the
    ``lora_targets``; the patch embedding and the adapters are never wrapped. Trainable: adapters and LoRA A/B.

    Args:
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha (the update is scaled by ``alpha / r``).
        lora_dropout: Dropout on the LoRA input.
        quantize_bits: 4 (bitsandbytes NF4), 8 (int8) or None (float base).
        lora_targets: Module-name patterns (see :class:`opentad_lora.peft.LoRAConfig`).
        lora_cfg: Further :class:`opentad_lora.peft.LoRAConfig` fields (``quant_type``, ``compute_dtype``,
            ``use_rslora``, ``rank_pattern``, ``exclude``, ...).
        **kwargs: Arguments of :class:`VisionTransformerAdapter`.
    """

    def __init__(self, lora_r: int = 16, lora_alpha: float = 32, lora_dropout: float = 0.1,
                 quantize_bits: Optional[int] = 4, lora_targets: Sequence[str] = ('qkv', 'proj', 'fc1', 'fc2'),
                 lora_cfg: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        extra = dict(lora_cfg or {})
        clash = sorted(set(extra) & {'r', 'alpha', 'dropout', 'targets', 'quantize_bits'})
        if clash:
            raise ValueError(f'lora_cfg sets {clash}; use lora_r, lora_alpha, lora_dropout, lora_targets and '
                             'quantize_bits instead.')
        exclude: List[str] = [*extra.pop('exclude', []), 'patch_embed.proj', ADAPTER_PATTERN]
        # The adapters train in full and are saved with the LoRA weights (PEFT's modules_to_save).
        to_save = [*extra.pop('modules_to_save', []), *(['adapter'] if any(b.adapter is not None for b in self.blocks) else [])]
        cfg = dict(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, targets=list(lora_targets),
                   quantize_bits=quantize_bits, exclude=exclude, modules_to_save=to_save, **extra)
        self.lora_report = apply_lora(self, cfg)
        print_log(str(self.lora_report), logger='current')
