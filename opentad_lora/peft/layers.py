"""LoRA layers: a frozen base layer plus named low-rank adapters that can be switched, merged and unmerged.

The parameter names follow PEFT (``<module>.base_layer.weight``, ``<module>.lora_A.<adapter>.weight``), so the
adapter files and the maths are interchangeable with PEFT's.
"""
import math
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as LF
from . import compiled_lora as CL
from .input_fn import is_recomputable
from .quant import dequantize_weight, dequantizing_linear, is_quantized, requantize_like

_CONV_TYPES = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


class LoRALayer(nn.Module):
    """Base of every LoRA layer: bookkeeping of named adapters around ``base_layer``.

    Subclasses build the ``(A, B)`` pair, compute the dense weight update and run the forward pass.

    Args:
        base_layer: The layer to adapt; it is kept frozen.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.r: Dict[str, int] = {}
        self.lora_alpha: Dict[str, float] = {}
        self.scaling: Dict[str, float] = {}
        self.dropout_p: Dict[str, float] = {}
        self.use_rslora: Dict[str, bool] = {}
        self.active_adapter: Optional[str] = None
        self.merged_adapters: List[str] = []
        self.adapters_disabled = False

    # -- construction ------------------------------------------------------------------------------------------
    def _make_pair(self, r: int) -> Tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def update_layer(self, adapter_name: str, r: int, alpha: float, dropout: float = 0.0,
                     use_rslora: bool = False, init: str = 'zero_b', dtype: torch.dtype = torch.float32) -> None:
        """Add (or replace) the adapter ``adapter_name``; the first adapter of a layer becomes the active one.

        A and B are kept in float32 whatever the base dtype (as PEFT's ``autocast_adapter_dtype``): the forward
        computes in the activation/autocast dtype, and small optimizer steps are not rounded away.
        """
        lora_a, lora_b = self._make_pair(r)
        device = self.base_layer.weight.device
        self.lora_A[adapter_name] = lora_a.to(device=device, dtype=dtype)
        self.lora_B[adapter_name] = lora_b.to(device=device, dtype=dtype)
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = alpha
        self.use_rslora[adapter_name] = use_rslora
        self.scaling[adapter_name] = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.dropout_p[adapter_name] = float(dropout)
        self.reset_lora_parameters(adapter_name, init)
        if self.active_adapter is None:
            self.active_adapter = adapter_name
        self._sync_requires_grad()

    def reset_lora_parameters(self, adapter_name: str, init: str = 'zero_b') -> None:
        """PEFT's init: A kaiming-uniform(a=sqrt(5)) (or normal(0, 1/r) for ``'gaussian'``), B zeros."""
        weight_a = self.lora_A[adapter_name].weight
        if init == 'gaussian':
            nn.init.normal_(weight_a, std=1.0 / self.r[adapter_name])
        else:
            nn.init.kaiming_uniform_(weight_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[adapter_name].weight)

    # -- adapters ----------------------------------------------------------------------------------------------
    @property
    def adapter_names(self) -> List[str]:
        return list(self.lora_A.keys())

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the one used in forward and the only one that trains.

        A layer without that adapter then computes with its base alone, as in PEFT: activating an adapter means
        "base model + this adapter" everywhere.
        """
        if self.merged and self.active_adapter != adapter_name:
            self.unmerge()
        self.active_adapter = adapter_name
        self._sync_requires_grad()

    def _sync_requires_grad(self) -> None:
        for name in self.lora_A:
            trainable = name == self.active_adapter
            self.lora_A[name].requires_grad_(trainable)
            self.lora_B[name].requires_grad_(trainable)

    # -- weights -----------------------------------------------------------------------------------------------
    def delta_weight(self, adapter_name: str) -> Tensor:
        """The dense update ``scaling * B @ A`` in the shape of the base weight, float32."""
        raise NotImplementedError

    def base_weight(self) -> Tensor:
        """The float weight the base layer computes with (dequantized for bitsandbytes bases)."""
        return dequantize_weight(self.base_layer) if is_quantized(self.base_layer) else self.base_layer.weight

    def _add_to_base(self, delta: Tensor) -> None:
        if is_quantized(self.base_layer):
            new_weight = dequantize_weight(self.base_layer) + delta.to(self.base_layer.weight.device)
            self.base_layer = requantize_like(self.base_layer, new_weight)
        else:
            weight = self.base_layer.weight
            weight.data = (weight.data.float() + delta.to(weight.device)).to(weight.dtype)

    def merge(self, adapter_names: Optional[Sequence[str]] = None) -> None:
        """Fold adapters into the base weight (``W += scaling * B @ A``); default: the active adapter.

        For a quantized base the weight is dequantized, updated and quantized again, which adds rounding error.
        """
        for name in adapter_names or [self.active_adapter]:
            if name in self.merged_adapters:
                continue
            if name not in self.lora_A:
                raise KeyError(f'Adapter {name!r} does not exist; this layer has {self.adapter_names}.')
            with torch.no_grad():
                self._add_to_base(self.delta_weight(name))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Undo every merge (exact for float32 bases; within the rounding of a 16-bit base (``base_dtype``) or the
        quantization error of a quantized one)."""
        with torch.no_grad():
            while self.merged_adapters:
                self._add_to_base(-self.delta_weight(self.merged_adapters.pop()))

    def _base_forward(self, x: Tensor) -> Tensor:
        """``base_layer(x)``; a float base stored in another dtype than ``x`` (``LoRAConfig.base_dtype``) computes
        in ``x``'s dtype outside autocast (:func:`.functional.base_operands`)."""
        base = self.base_layer
        if base.weight.dtype == x.dtype or is_quantized(base):
            return base(x)
        weight, bias = LF.base_operands(x, base.weight, base.bias)
        if weight is base.weight:
            return base(x)
        return base._conv_forward(x, weight, bias) if type(base) in _CONV_TYPES else F.linear(x, weight, bias)

    def _use_lora(self) -> bool:
        if self.adapters_disabled:
            if self.merged:
                self.unmerge()
            return False
        return not self.merged and self.active_adapter in self.lora_A

    # -- passthrough of the base layer's public attributes -----------------------------------------------------
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Optional[Tensor]:
        return self.base_layer.bias

    def extra_repr(self) -> str:
        adapters = ', '.join(f'{n}: r={self.r[n]}, alpha={self.lora_alpha[n]}' for n in self.adapter_names)
        return f'adapters=[{adapters}], active={self.active_adapter!r}, merged={self.merged_adapters}'


class LoRALinear(LoRALayer):
    """LoRA around ``nn.Linear`` or a bitsandbytes ``Linear4bit``/``Linear8bitLt``.

    ``y = base(x) + dropout(x) @ A.T @ B.T * scaling`` through the fused autograd function of :mod:`.functional`.
    A quantized base is dequantized to the compute dtype inside it (weight-only quantization; with adapters
    disabled or merged the bitsandbytes forward runs as is).
    """

    def __init__(self, base_layer: nn.Module, fused: bool = True) -> None:
        super().__init__(base_layer)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.fused = fused  # False forces the reference autograd path (for comparisons)
        self.keep_dequantized = False  # see LoRAConfig.keep_dequantized
        self.recompute_input = True  # see LoRAConfig.recompute_inputs (read by linear_after)

    def _make_pair(self, r: int) -> Tuple[nn.Module, nn.Module]:
        return nn.Linear(self.in_features, r, bias=False), nn.Linear(r, self.out_features, bias=False)

    def _dequantize(self, dtype: torch.dtype, out: Optional[Tensor] = None) -> Tensor:
        return dequantize_weight(self.base_layer, dtype, out)

    def delta_weight(self, adapter_name: str) -> Tensor:
        return LF.linear_delta_weight(self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight,
                                      self.scaling[adapter_name])

    def forward(self, x: Tensor, input_fn: Optional[nn.Module] = None) -> Tensor:
        """``base(x) + lora(x)``; with ``input_fn`` (see :mod:`.input_fn`) the layer is applied to ``input_fn(x)``
        and the fused path keeps ``x`` for backward instead of a copy of ``input_fn(x)``."""
        if input_fn is not None and not is_recomputable(input_fn):
            raise TypeError('input_fn must be GELU/SiLU/ReLU (not in place) or a LayerNorm with frozen affine '
                            f'parameters, got {input_fn!r}.')
        if not self._use_lora():
            return self._base_forward(x if input_fn is None else input_fn(x))
        name = self.active_adapter
        lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
        scaling, dropout_p = self.scaling[name], self.dropout_p[name]
        if self.fused and LF.use_plain_path(x, dropout_p, self.training):
            x = x if input_fn is None else input_fn(x)  # few rows, or compiled: inductor recomputes it
            if CL.applies(self.base_layer, x, dropout_p, self.training):
                return CL.lora_linear_compiled(x, self.base_layer, lora_a, lora_b, scaling)
            quantized = is_quantized(self.base_layer)
            base_forward = partial(dequantizing_linear, self.base_layer) if quantized else self._base_forward
            return LF.lora_linear_plain(x, base_forward, lora_a, lora_b, scaling, dropout_p, self.training)
        if is_quantized(self.base_layer):
            return LF.qlora_linear(x, self._dequantize, self.base_layer.bias, lora_a, lora_b, scaling, dropout_p,
                                   self.training, fused=self.fused, keep_dequantized=self.keep_dequantized,
                                   input_fn=input_fn)
        return LF.lora_linear(x, self.base_layer.weight, self.base_layer.bias, lora_a, lora_b, scaling, dropout_p,
                              self.training, fused=self.fused, input_fn=input_fn)


class LoRAConv(LoRALayer):
    """LoRA around ``nn.Conv1d/2d/3d``: A is a conv with the base kernel, stride, padding and dilation, B a 1x1 conv.

    Grouped convolutions are not supported (the dense update would not be low-rank per group).
    """

    def __init__(self, base_layer: nn.Module) -> None:
        if type(base_layer) not in _CONV_TYPES:
            raise TypeError(f'LoRAConv wraps Conv1d/2d/3d, got {type(base_layer).__name__}.')
        if base_layer.groups != 1:
            raise ValueError(f'LoRA on a grouped convolution (groups={base_layer.groups}) is not supported.')
        super().__init__(base_layer)
        self.in_channels = base_layer.in_channels
        self.out_channels = base_layer.out_channels

    def _make_pair(self, r: int) -> Tuple[nn.Module, nn.Module]:
        base = self.base_layer
        conv = type(base)
        lora_a = conv(base.in_channels, r, base.kernel_size, stride=base.stride, padding=base.padding,
                      dilation=base.dilation, bias=False, padding_mode=base.padding_mode)
        lora_b = conv(r, base.out_channels, 1, bias=False)
        return lora_a, lora_b

    def delta_weight(self, adapter_name: str) -> Tensor:
        return LF.conv_delta_weight(self.lora_A[adapter_name].weight.float(),
                                    self.lora_B[adapter_name].weight.float(), self.scaling[adapter_name])

    def forward(self, x: Tensor) -> Tensor:
        result = self._base_forward(x)
        if not self._use_lora():
            return result
        name = self.active_adapter
        lora_in = x.to(self.lora_A[name].weight.dtype)
        if self.dropout_p[name] > 0.0 and self.training:
            lora_in = nn.functional.dropout(lora_in, self.dropout_p[name], training=True)
        delta = self.lora_B[name](self.lora_A[name](lora_in)) * self.scaling[name]
        return result + delta.to(result.dtype)


def linear_after(linear: nn.Module, fn: Optional[nn.Module], x: Tensor) -> Tensor:
    """``linear(fn(x))`` (``linear(x)`` if ``fn`` is None), letting a LoRA ``linear`` keep ``x`` rather than ``fn(x)``.

    For model code such as ``qkv(norm1(x))`` or an MLP's ``fc2(act(h))``: the norm or activation keeps ``x`` for its
    own backward already, so a LoRA layer that applies it itself stores nothing more than the model without LoRA
    (:mod:`.input_fn` lists the functions; others are applied first, as usual).
    """
    if fn is None:
        return linear(x)
    if isinstance(linear, LoRALinear) and linear.recompute_input and is_recomputable(fn):
        return linear(x, input_fn=fn)
    return linear(fn(x))


def lora_layer_class(module: nn.Module) -> Optional[type]:
    """The LoRA class that can wrap ``module``, or None if its type is not supported."""
    if type(module) in _CONV_TYPES:
        return LoRAConv
    if isinstance(module, nn.Linear):  # bitsandbytes layers subclass nn.Linear
        return LoRALinear
    return None
