"""``LoRAConfig``: every LoRA/QLoRA option, buildable from a plain config dict."""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from .targets import compile_pattern

_DTYPES = {'float32': torch.float32, 'fp32': torch.float32, 'float16': torch.float16, 'fp16': torch.float16,
           'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16}
INIT_METHODS = ('zero_b', 'gaussian')
_DTYPE_KEYS = ('compute_dtype', 'quant_storage', 'base_dtype')


def resolve_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    """Turn ``'bf16'``/``'bfloat16'``/``torch.bfloat16`` (or None) into a ``torch.dtype`` (or None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).replace('torch.', '') in _DTYPES:
        return _DTYPES[str(dtype).replace('torch.', '')]
    raise ValueError(f'Unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}.')


@dataclass
class LoRAConfig:
    """Where LoRA goes and how it is built.

    Args:
        r: Rank of the update ``B @ A``.
        alpha: Scaling numerator: the update is multiplied by ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
        dropout: Dropout probability applied to the LoRA input only (the base path never sees it).
        targets: Module-name patterns to wrap (see :mod:`opentad_lora.peft.targets`). An entry may also be
            ``dict(pattern=..., r=..., alpha=...)``, which adds the pattern and its own rank/alpha.
        exclude: Patterns of modules never to wrap, even when a target selects them.
        use_rslora: Scale by ``alpha / sqrt(r)`` (rank-stabilised LoRA).
        quantize_bits: ``None`` (float base), ``4`` (bitsandbytes ``Linear4bit``) or ``8`` (``Linear8bitLt``).
            Only ``nn.Linear`` bases are quantized; targeted convolutions stay in float.
        quant_type: ``'nf4'`` or ``'fp4'`` for 4-bit bases.
        double_quant: Quantize the 4-bit absmax constants too (QLoRA's double quantization).
        compute_dtype: dtype the quantized bases are stored and dequantized in (the 4-bit matmul dtype); None keeps
            float32. LoRA weights are always kept in float32; they compute in the activation/autocast dtype.
        quant_storage: dtype that holds the packed 4-bit data (None: uint8). FSDP flattens a unit's parameters into
            one float tensor, so under FSDP set it to the dtype of the other weights of the unit (e.g. float32).
        base_dtype: dtype to store the frozen float bases of the LoRA layers in, e.g. ``'bfloat16'`` under bf16
            autocast: half the memory of float32 bases, and the fused layer then neither casts the weight every step
            nor keeps a cast copy of it for backward. None keeps the model's dtype. Use the autocast dtype: under
            fp16 autocast a bf16 base is coarser than the float32 one rounded to fp16. Outside autocast such a base
            computes in the input's dtype; merging into it rounds to its dtype. Not for quantized bases (their
            dtype is ``compute_dtype``) nor under FSDP (one dtype per flattened unit).
        keep_dequantized: Keep each quantized base's dequantized weight from forward until backward instead of
            dequantizing it again there: one dequantization less per layer and step, for a compute-dtype copy of
            every quantized weight held through the step (what QLoRA is meant to avoid). Off by default. Calls with
            fewer than ``functional.PLAIN_MAX_ROWS`` rows and no dropout take the plain path, which always
            dequantizes again.
        recompute_inputs: Where model code hands a LoRA linear the norm or activation before it
            (:func:`~opentad_lora.peft.linear_after`: ``qkv``/``fc1`` after the block's LayerNorm, ``fc2`` after GELU
            in our ViT blocks), the layer applies it itself and keeps its input instead of a copy of its output,
            applying it again in backward. On by default: on AdaTAD ViT-B (768 frames, checkpointing) it cuts LoRA's
            peak memory from 1.07x to 1.03x the adapter baseline for about 4 % more step time
            (benchmarks/RESULTS.md).
        rank_pattern: ``{pattern: r}`` overrides; the first matching pattern wins.
        alpha_pattern: ``{pattern: alpha}`` overrides; the first matching pattern wins.
        modules_to_save: Patterns of modules trained in full and saved with the adapter (e.g. a new head).
        init: ``'zero_b'`` (PEFT default: A kaiming-uniform, B zeros) or ``'gaussian'`` (A normal(0, 1/r)).
        base_model_name_or_path: Recorded in ``adapter_config.json`` so the adapter names its base.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: List[Union[str, Dict[str, Any]]] = field(default_factory=list)
    exclude: List[str] = field(default_factory=list)
    use_rslora: bool = False
    quantize_bits: Optional[int] = None
    quant_type: str = 'nf4'
    double_quant: bool = True
    compute_dtype: Union[None, str, torch.dtype] = None
    quant_storage: Union[None, str, torch.dtype] = None
    base_dtype: Union[None, str, torch.dtype] = None
    keep_dequantized: bool = False
    recompute_inputs: bool = True
    rank_pattern: Dict[str, int] = field(default_factory=dict)
    alpha_pattern: Dict[str, float] = field(default_factory=dict)
    modules_to_save: List[str] = field(default_factory=list)
    init: str = 'zero_b'
    base_model_name_or_path: Optional[str] = None

    def __post_init__(self) -> None:
        self.targets = list(self.targets)
        self.rank_pattern = dict(self.rank_pattern)
        self.alpha_pattern = dict(self.alpha_pattern)
        flat = []
        for target in self.targets:
            if isinstance(target, Mapping):
                target = dict(target)
                pattern = target.pop('pattern', None)
                if pattern is None:
                    raise ValueError(f'A dict target needs a "pattern" key, got {target!r}.')
                if 'r' in target:
                    self.rank_pattern.setdefault(pattern, target.pop('r'))
                if 'alpha' in target:
                    self.alpha_pattern.setdefault(pattern, target.pop('alpha'))
                if target:
                    raise ValueError(f'Unknown keys {sorted(target)} in target {pattern!r}; allowed: r, alpha.')
                flat.append(pattern)
            else:
                flat.append(target)
        self.targets = flat
        self.validate()

    @classmethod
    def build(cls, cfg: Union['LoRAConfig', Mapping[str, Any]]) -> 'LoRAConfig':
        """Build from a ``LoRAConfig`` or a config dict (a ``type`` key, if present, is ignored).

        Raises:
            ValueError: if the dict has keys that are not fields, naming them.
        """
        if isinstance(cls, type) and isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, Mapping):
            raise TypeError(f'A LoRA config must be a LoRAConfig or a dict, got {type(cfg).__name__}.')
        cfg = {k: v for k, v in dict(cfg).items() if k != 'type'}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f'Unknown LoRA config keys {unknown}; allowed keys: {sorted(known)}.')
        return cls(**cfg)

    def validate(self) -> None:
        """Check every value; raise ``ValueError`` naming the bad one."""
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise ValueError(f'LoRA rank r must be a positive integer, got {self.r!r}.')
        if not self.alpha > 0:
            raise ValueError(f'LoRA alpha must be > 0, got {self.alpha!r}.')
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f'LoRA dropout must be in [0, 1), got {self.dropout!r}.')
        if not self.targets:
            raise ValueError('LoRA config has no targets: give module-name patterns, e.g. targets=["qkv", "proj"].')
        if self.quantize_bits not in (None, 4, 8):
            raise ValueError(f'quantize_bits must be None, 4 or 8, got {self.quantize_bits!r}.')
        if self.quant_type not in ('nf4', 'fp4'):
            raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {self.quant_type!r}.")
        if self.init not in INIT_METHODS:
            raise ValueError(f'init must be one of {INIT_METHODS}, got {self.init!r}.')
        for key in _DTYPE_KEYS:
            try:
                resolve_dtype(getattr(self, key))
            except ValueError as err:
                raise ValueError(f'LoRA config {key}: {err}') from None
        if self.base_dtype is not None and self.quantize_bits:
            raise ValueError(f'base_dtype={self.base_dtype!r} applies to float bases, but quantize_bits='
                             f'{self.quantize_bits} quantizes them: set compute_dtype instead.')
        for pattern in [*self.targets, *self.exclude, *self.rank_pattern, *self.alpha_pattern, *self.modules_to_save]:
            compile_pattern(pattern)
        for pattern, rank in self.rank_pattern.items():
            if not isinstance(rank, int) or rank <= 0:
                raise ValueError(f'rank_pattern[{pattern!r}] must be a positive integer, got {rank!r}.')
        for pattern, alpha in self.alpha_pattern.items():
            if not alpha > 0:
                raise ValueError(f'alpha_pattern[{pattern!r}] must be > 0, got {alpha!r}.')

    @property
    def torch_compute_dtype(self) -> Optional[torch.dtype]:
        return resolve_dtype(self.compute_dtype)

    @property
    def torch_quant_storage(self) -> Optional[torch.dtype]:
        return resolve_dtype(self.quant_storage)

    @property
    def torch_base_dtype(self) -> Optional[torch.dtype]:
        return resolve_dtype(self.base_dtype)

    def to_dict(self) -> Dict[str, Any]:
        """A plain dict that ``LoRAConfig.build`` turns back into an equal config."""
        out = dataclasses.asdict(self)
        for key in _DTYPE_KEYS:
            if isinstance(out[key], torch.dtype):
                out[key] = str(out[key]).replace('torch.', '')
        return out
