"""Mode suffixes that route the LoRA layers another way, for A/B runs of ``lora_step.py``/``profile_step.py`` in ONE
process (the host's speed moves by ±15 % between processes, more than some of the differences measured).

* ``_notriton``: no Triton kernels (``OPENTAD_LORA_DROPOUT_KERNEL=torch``: the dropout and the norm/GELU operand
  kernels off; the layers read that variable at each call).
* ``_plain``: every eager layer on plain autograd ops (``PLAIN_MAX_ROWS`` raised), as small layers are.
* ``_fusedcompiled``: the fused function kept inside ``torch.compile`` (the routing before session 11, which
  ``functional.use_plain_path`` replaced); for a compiled mode, e.g. ``ours_lora_compile_fusedcompiled``.
* ``_plaincompiled``: compiled layers on plain ops instead of ``compiled_lora.LoRAConcatGEMM`` (session 12).
* ``_concatcompiled``: compiled layers on ``LoRAConcatGEMM`` also on torch < 2.12 (which keeps checkpointed
  blocks' activations with it: for models without checkpointing only).
* ``_addmm``: as ``_plaincompiled``, and the plain ops add the low-rank product with ``addmm`` as eager ones do
  (session 11).
* ``_bnbdequant``: 4-bit weights dequantized by bitsandbytes' op everywhere (``OPENTAD_LORA_DEQUANT_KERNEL=bnb``;
  compiled: instead of torch ops inductor fuses, the routing before session 14). Combines with the others, written
  last: ``ours_qlora4_compile_plaincompiled_bnbdequant``.

    python benchmarks/profile_step.py --model ours --modes floor,ours_lora,ours_lora_notriton,ours_lora_plain
"""
import contextlib
import os
from typing import Iterator, Tuple

import torch

from opentad_lora.peft import compiled_lora as CL
from opentad_lora.peft import functional as LF

SUFFIXES = ('_notriton', '_plain', '_fusedcompiled', '_addmm', '_plaincompiled', '_concatcompiled')
DEQUANT_SUFFIX = '_bnbdequant'


def _split(mode: str) -> Tuple[str, str, bool]:
    """``(mode, routing suffix, whether _bnbdequant)``."""
    bnb_dequant = mode.endswith(DEQUANT_SUFFIX)
    mode = mode[:-len(DEQUANT_SUFFIX)] if bnb_dequant else mode
    for suffix in SUFFIXES:
        if mode.endswith(suffix):
            return mode[:-len(suffix)], suffix, bnb_dequant
    return mode, '', bnb_dequant


def _eager_rule(x, dropout_p: float, training: bool) -> bool:
    """``use_plain_path`` without its compiled case: few rows and no dropout."""
    return x.numel() < LF.PLAIN_MAX_ROWS * x.shape[-1] and not (dropout_p > 0.0 and training)


def _never(*args) -> bool:
    return False


def _addmm(base_out, xa, lora_b, scaling: float):
    return torch.addmm(base_out, xa, lora_b.t(), alpha=scaling)


@contextlib.contextmanager
def routed(mode: str) -> Iterator[str]:
    """Route the layers as ``mode``'s suffix says while the block runs (build and time the model inside it); yields
    the mode without the suffix."""
    base, suffix, bnb_dequant = _split(mode)
    saved = (os.environ.get('OPENTAD_LORA_DROPOUT_KERNEL'), LF.PLAIN_MAX_ROWS, LF.use_plain_path, LF.add_low_rank,
             CL.applies, CL.AUTOGRAD_FUNCTIONS_RECOMPUTED)
    saved_dequant = os.environ.get('OPENTAD_LORA_DEQUANT_KERNEL')
    try:
        if bnb_dequant:
            os.environ['OPENTAD_LORA_DEQUANT_KERNEL'] = 'bnb'
        if suffix == '_notriton':
            os.environ['OPENTAD_LORA_DROPOUT_KERNEL'] = 'torch'
        elif suffix == '_plain':
            LF.PLAIN_MAX_ROWS = 1 << 62
        elif suffix == '_fusedcompiled':
            LF.use_plain_path = _eager_rule
        if suffix in ('_addmm', '_plaincompiled'):
            CL.applies = _never
        if suffix == '_addmm':
            LF.add_low_rank = _addmm
        if suffix == '_concatcompiled':
            CL.AUTOGRAD_FUNCTIONS_RECOMPUTED = True
        yield base
    finally:
        for name, value in (('OPENTAD_LORA_DROPOUT_KERNEL', saved[0]), ('OPENTAD_LORA_DEQUANT_KERNEL', saved_dequant)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        (LF.PLAIN_MAX_ROWS, LF.use_plain_path, LF.add_low_rank, CL.applies,
         CL.AUTOGRAD_FUNCTIONS_RECOMPUTED) = saved[1:]
