"""The one-launch 4-bit dequantization kernels, per byte and per element (run here by Triton's CPU interpreter): bit
for bit bitsandbytes' dequantization at any blocksize (its torch code, see ``conftest._bnb_dequantize_4bit``),
written into a strided view without touching its neighbours, and behind ``dequantize_weight``; compiled for sm_90
without FMA contraction, with 16-byte stores."""
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip('triton', reason='the kernel needs Triton (requirements/tests.txt installs it)')
bnb = pytest.importorskip('bitsandbytes')

from opentad_lora.peft import dequantize_weight, quantize_linear  # noqa: E402

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (rows, cols, columns of the buffer past them). Even row lengths (per-byte kernel): blocks ending inside 64-value
# chunks, over two nested-absmax blocks, into rows on 16 bytes (vectorized stores); one block; whole chunks with a
# partial last tile of rows and of columns, rows on 16 bytes; a last partial chunk. Odd (per-element kernel): rows
# start mid-byte, a padded last nibble.
SHAPES = ((96, 200, 8), (3, 64, 5), (70, 320, 8), (20, 30, 5), (7, 9, 5))
SENTINEL = 7.0


class _Launches:
    """A Triton kernel that logs ``name`` at each launch."""

    def __init__(self, kernel, name: str, log: list):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        self.log.append(self.name)
        return self.kernel[grid]


@pytest.fixture
def kernels(monkeypatch):
    """:mod:`nf4_kernels`, logging its calls (``.calls``) and which kernel each launched (``.launched``)."""
    monkeypatch.setenv('OPENTAD_LORA_DEQUANT_KERNEL', 'interpret')  # CPU tensors too (conftest: TRITON_INTERPRET=1)
    from opentad_lora.peft import nf4_kernels
    calls, launched = [], []
    launch = nf4_kernels.dequantize_4bit_into
    monkeypatch.setattr(nf4_kernels, 'dequantize_4bit_into', lambda *args: calls.append(args) or launch(*args))
    for name in ('_dequantize_4bit_kernel', '_dequantize_4bit_bytes_kernel'):
        monkeypatch.setattr(nf4_kernels, name, _Launches(getattr(nf4_kernels, name), name, launched))
    nf4_kernels.calls, nf4_kernels.launched = calls, launched
    yield nf4_kernels
    del nf4_kernels.calls, nf4_kernels.launched


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float tensor (-0.0 != 0.0, unlike ``torch.equal``)."""
    return tensor.view(torch.int32 if tensor.dtype == torch.float32 else torch.int16)


def _same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Bit for bit equal, but for the sign of zero (see ``conftest._bnb_dequantize_4bit``)."""
    return torch.equal(_bits(got + 0.0), _bits(want + 0.0))  # -0.0 + 0.0 is +0.0; nothing else changes


def _layer(shape, quant_type: str, double_quant: bool, **kwargs) -> nn.Module:
    """A 4-bit layer of a seeded float weight whose rows span six decades (blocks differ widely in absmax)."""
    torch.manual_seed(shape[0] * 1000 + shape[1])
    linear = nn.Linear(shape[1], shape[0])
    linear.weight.data.mul_(torch.logspace(-3, 3, shape[0]).unsqueeze(1))
    return quantize_linear(linear, 4, quant_type, double_quant, **kwargs)


@pytest.mark.parametrize('quant_type, double_quant', itertools.product(('nf4', 'fp4'), (True, False)))
def test_kernel_is_bit_identical_to_bnb_into_a_strided_view(kernels, bnb_dequantize_4bit, quant_type, double_quant):
    for rows, cols, pad in SHAPES:
        layer = _layer((rows, cols), quant_type, double_quant)
        state = layer.weight.quant_state
        assert state.nested == double_quant
        for dtype in DTYPES:
            buffer = torch.full((rows, cols + pad), SENTINEL, dtype=dtype)  # an (O, K + r) operand
            got = kernels.dequantize_4bit_into(layer.weight.data, state, dtype, buffer[:, :cols])
            assert kernels.launched[-1] == ('_dequantize_4bit_bytes_kernel' if cols % 2 == 0 else
                                            '_dequantize_4bit_kernel')
            assert got.data_ptr() == buffer.data_ptr() and got.dtype == dtype and got.shape == (rows, cols)
            assert _same_bits(got, bnb_dequantize_4bit(layer.weight.data, state, dtype)), (rows, cols, dtype)
            assert torch.equal(buffer[:, cols:], torch.full((rows, pad), SENTINEL, dtype=dtype))
    assert quant_type == 'nf4' or (_bits(got) == _bits(torch.tensor(-0.0, dtype=dtype))).any()  # FP4's -0.0 seen


@pytest.mark.parametrize('blocksize', (32, 128, 256))
def test_kernel_is_bit_identical_to_bnb_for_other_blocksizes(kernels, bnb_dequantize_4bit, blocksize):
    """Blocks of 128 or 256 values end inside a chunk of a row of 200 (per-byte kernel, which reads two absmax
    there), on chunk ends in a row of 192; blocks of 32 values take the per-element kernel."""
    for cols, (quant_type, nested) in itertools.product((192, 200), (('nf4', True), ('fp4', False))):
        weight = torch.randn(24, cols) * torch.logspace(-3, 3, 24).unsqueeze(1)
        data, state = bnb.functional.quantize_4bit(weight, blocksize=blocksize, compress_statistics=nested,
                                                   quant_type=quant_type)
        for dtype in (torch.float32, torch.bfloat16):
            got = kernels.dequantize_4bit_into(data, state, dtype)
            assert _same_bits(got, bnb_dequantize_4bit(data, state, dtype)), (cols, quant_type, dtype)
    assert set(kernels.launched) == {'_dequantize_4bit_kernel' if blocksize == 32 else '_dequantize_4bit_bytes_kernel'}


def test_kernel_refuses_an_out_of_another_shape_dtype_or_layout(kernels):
    layer = _layer((8, 64), 'nf4', True)
    state = layer.weight.quant_state
    for bad in (torch.empty(8, 65), torch.empty(8, 64, dtype=torch.float16), torch.empty(64, 8).t()):
        with pytest.raises(ValueError, match='out must be'):
            kernels.dequantize_4bit_into(layer.weight.data, state, torch.float32, bad)


@pytest.mark.parametrize('quant_type, double_quant', [('nf4', True), ('fp4', False)])
def test_dequantize_weight_uses_the_kernel_and_writes_into_out(kernels, monkeypatch, quant_type, double_quant):
    layer = _layer((20, 30), quant_type, double_quant)
    for dtype in DTYPES:
        buffer = torch.full((20, 34), SENTINEL, dtype=dtype)
        before = len(kernels.calls)
        plain, into = dequantize_weight(layer, dtype), dequantize_weight(layer, dtype, buffer[:, :30])
        assert len(kernels.calls) == before + 2 and into.data_ptr() == buffer.data_ptr()
        monkeypatch.setenv('OPENTAD_LORA_DEQUANT_KERNEL', 'bnb')
        reference, bnb_into = dequantize_weight(layer, dtype), torch.full((20, 34), SENTINEL, dtype=dtype)
        dequantize_weight(layer, dtype, bnb_into[:, :30])  # bitsandbytes' path copies into out
        monkeypatch.setenv('OPENTAD_LORA_DEQUANT_KERNEL', 'interpret')
        assert len(kernels.calls) == before + 2
        for got in (plain, into, bnb_into[:, :30]):
            assert torch.equal(_bits(got), _bits(reference))
        assert torch.equal(buffer, bnb_into)  # the other columns untouched by either path


def test_dequantize_weight_falls_back_where_the_kernel_does_not_apply(kernels, bnb_dequantize_4bit):
    """A bfloat16 state read in float32 is rounded to bfloat16 first (bitsandbytes' op); a float storage (FSDP) is
    bitsandbytes' too; an 8-bit weight is written into ``out`` by its one multiply."""
    layer = _layer((20, 30), 'nf4', True, compute_dtype=torch.bfloat16)
    buffer = torch.zeros(20, 31)
    expected = bnb_dequantize_4bit(layer.weight.data, layer.weight.quant_state, torch.bfloat16).float()
    assert torch.equal(dequantize_weight(layer, torch.float32, buffer[:, :30]), expected)
    floats = _layer((20, 30), 'nf4', False, quant_storage=torch.float32)
    assert torch.equal(dequantize_weight(floats, torch.bfloat16),
                       bnb_dequantize_4bit(floats.weight.data, floats.weight.quant_state, torch.bfloat16))
    assert not kernels.calls
    int8 = quantize_linear(nn.Linear(30, 20), 8)
    buffer = torch.zeros(20, 33, dtype=torch.bfloat16)
    dequantize_weight(int8, torch.bfloat16, buffer[:, :30])
    assert torch.equal(buffer[:, :30], dequantize_weight(int8, torch.bfloat16)) and not buffer[:, 30:].any()


def test_kernel_is_the_default_on_cuda_and_the_switch_is_checked(kernels, monkeypatch, bnb_dequantize_4bit):
    """Unset, the kernel serves CUDA weights (timed faster on a whole H200 step) and CPU ones stay bitsandbytes';
    ``=bnb`` turns it off everywhere; a wrong value stops with the choices named."""
    from opentad_lora.peft import quant
    layer = _layer((8, 64), 'nf4', True)
    state = layer.weight.quant_state
    on_cuda = SimpleNamespace(device=torch.device('cuda'), dtype=torch.uint8, is_contiguous=lambda: True,
                              numel=layer.weight.numel)  # what the switch reads of a CUDA weight
    monkeypatch.delenv('OPENTAD_LORA_DEQUANT_KERNEL')
    assert quant._dequant_kernel_applies(on_cuda, state, torch.bfloat16, None)
    assert not quant._dequant_kernel_applies(layer.weight, state, torch.bfloat16, None)
    assert torch.equal(dequantize_weight(layer, torch.bfloat16), bnb_dequantize_4bit(layer.weight.data, state,
                                                                                    torch.bfloat16))
    assert not kernels.calls
    monkeypatch.setenv('OPENTAD_LORA_DEQUANT_KERNEL', 'bnb')
    assert not quant._dequant_kernel_applies(on_cuda, state, torch.bfloat16, None)
    monkeypatch.setenv('OPENTAD_LORA_DEQUANT_KERNEL', 'auto')
    with pytest.raises(ValueError, match="'bnb', 'kernel', 'interpret'"):
        dequantize_weight(layer, torch.bfloat16)


def test_kernels_compile_for_sm90_without_fma_contraction_with_16_byte_stores():
    """The launch options keep the nested absmax's ``product + offset`` two roundings (no ``fma``) on the GPU, where
    Triton's default contracts them; the interpreter never fuses, so only compiled code (PTX) shows it. The per-byte
    kernel, as launched for a ViT layer (rows of a multiple of 64 values, on 16 bytes: ``UNIT``), stores 16 bytes at
    a time and its join moves no data through shared memory. Compiled in a fresh process: one where the interpreter
    has run keeps part of ``triton.language`` patched."""
    script = textwrap.dedent("""
        import triton
        from triton.backends.compiler import GPUTarget
        from opentad_lora.peft import nf4_kernels as K
        types = dict(packed_ptr='*u8', absmax_ptr='*u8', out_ptr='*bf16', ROWS='i32', COLS='i32', SO='i32')
        common = dict(UNIT=8, BLOCKSIZE=64, BLOCKSIZE2=256, NESTED=True)
        for kernel, constexprs in ((K._dequantize_4bit_kernel, dict(BLOCK_R=K.BLOCK_R, BLOCK_C=K.BLOCK_C)),
                                   (K._dequantize_4bit_bytes_kernel, dict(BLOCK_R=K.CHUNKS_PER_PROGRAM // 4, CHUNKS=4,
                                                                          CHUNK=K.CHUNK, ALIGNED=True))):
            constexprs.update(common)
            signature = {name: 'constexpr' if name in constexprs else types.get(name, '*fp32')
                         for name in kernel.arg_names}
            # what Triton's launcher knows: 16-byte aligned pointers, a row length divisible by 16 (64 here)
            attrs = {(index,): [['tt.divisibility', 16]] for index, name in enumerate(kernel.arg_names)
                     if signature[name].startswith('*') or name == 'COLS'}
            for fusion in (K.LAUNCH_OPTIONS['enable_fp_fusion'], True):
                compiled = triton.compile(triton.compiler.ASTSource(kernel, signature, constexprs, attrs),
                                          target=GPUTarget('cuda', 90, 32),
                                          options={**K.LAUNCH_OPTIONS, 'enable_fp_fusion': fusion})
                assert compiled.asm['cubin']
                ptx = compiled.asm['ptx']
                print(ptx.count('fma.rn.f32'), ptx.count('st.global.v4.b32'), ptx.count('ld.shared'))
        """)
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_INTERPRET'}
    done = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    counts = [int(n) for n in done.stdout.split()]  # per kernel and fusion: fma, 16-byte stores, shared loads
    assert counts == [0, 2, 0, counts[3], 2, 0, 0, 4, 0, counts[9], 4, 0] and counts[3] > 0 and counts[9] > 0


def test_fused_qlora_layer_dequantizes_into_its_concatenated_weight(kernels, monkeypatch):
    """A wide QLoRA layer (out >= 2 in: the ``[W | sB]`` GEMM) has the kernel write ``W`` straight into that buffer:
    one launch per pass, no ``torch.cat`` of the weight, and the numbers of the bitsandbytes path."""
    from opentad_lora.peft import apply_lora
    from opentad_lora.peft import functional as LF
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)  # the fused function, whatever the size
    results = {}
    for switch in ('bnb', 'interpret'):
        monkeypatch.setenv('OPENTAD_LORA_DEQUANT_KERNEL', switch)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 96))
        apply_lora(model, dict(r=4, alpha=8, targets=['0'], quantize_bits=4))
        with torch.no_grad():
            model[0].lora_B['default'].weight.normal_()
        x = torch.randn(5, 32, requires_grad=True)
        kernels.calls.clear()
        cats = []
        real_cat = torch.cat
        monkeypatch.setattr(torch, 'cat', lambda tensors, *args, **kwargs: cats.append(tensors[0].shape)
                            or real_cat(tensors, *args, **kwargs))
        out = model(x)
        monkeypatch.setattr(torch, 'cat', real_cat)
        out.pow(2).sum().backward()
        results[switch] = (out.detach(), x.grad, len(kernels.calls), cats)
    assert torch.equal(results['bnb'][0], results['interpret'][0])
    assert torch.equal(results['bnb'][1], results['interpret'][1])
    assert results['interpret'][2] == 2  # forward into [W | sB], backward on its own
    assert torch.Size((96, 32)) not in results['interpret'][3] and results['bnb'][2] == 0


def test_interpret_switch_without_the_interpreter_stops_with_a_clear_error(kernels, monkeypatch):
    """``=interpret`` on CPU tensors with compiled (not interpreted) kernels would hand CPU pointers to a GPU launch:
    one error saying what to set instead."""
    monkeypatch.setattr(kernels, 'INTERPRETED', False)
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET=1'):
        dequantize_weight(_layer((8, 64), 'nf4', True), torch.bfloat16)
