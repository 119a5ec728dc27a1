"""The fused LoRA autograd function equals the reference path in forward and in every gradient."""
import pytest
import torch

from opentad_lora.peft import functional as LF
from opentad_lora.peft.functional import FusedLoRALinear, _scaled, lora_linear, lora_linear_reference


def _inputs(dtype=torch.float32, bias=True, train_base=False, transposed=False):
    x = torch.randn(3, 7, 16, dtype=dtype)
    if transposed:  # a non-contiguous input, as after a transpose in attention code
        x = torch.randn(3, 16, 7, dtype=dtype).transpose(1, 2)
    x.requires_grad_(True)
    weight = torch.randn(12, 16, dtype=dtype, requires_grad=train_base)
    b = torch.randn(12, dtype=dtype, requires_grad=train_base) if bias else None
    lora_a = torch.randn(4, 16, dtype=dtype, requires_grad=True)
    lora_b = torch.randn(12, 4, dtype=dtype, requires_grad=True)
    return x, weight, b, lora_a, lora_b


def _grads(out, tensors):
    targets = [t for t in tensors if t is not None and t.requires_grad]
    return torch.autograd.grad((out.float() ** 2).sum(), targets)


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('train_base', [False, True])
@pytest.mark.parametrize('transposed', [False, True])
def test_fused_matches_reference_fp32(bias, train_base, transposed):
    tensors = _inputs(bias=bias, train_base=train_base, transposed=transposed)
    ref = lora_linear_reference(*tensors, scaling=0.75)
    fused = FusedLoRALinear.apply(*tensors, 0.75, 0.0, False)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    for g_fused, g_ref in zip(_grads(fused, tensors), _grads(ref, tensors)):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('transposed', [False, True])
def test_fused_dropout_uses_the_same_mask_as_the_reference(transposed):
    tensors = _inputs(transposed=transposed)
    torch.manual_seed(7)
    ref = lora_linear_reference(*tensors, scaling=2.0, dropout_p=0.3, training=True)
    torch.manual_seed(7)
    fused = lora_linear(*tensors, scaling=2.0, dropout_p=0.3, training=True)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    for g_fused, g_ref in zip(_grads(fused, tensors), _grads(ref, tensors)):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-4)


def test_fused_under_bf16_autocast_matches_reference_within_bf16_tolerance():
    tensors = _inputs()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ref = lora_linear_reference(*tensors, scaling=0.5)
        fused = lora_linear(*tensors, scaling=0.5)
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), ref.float(), rtol=2e-2, atol=5e-2)
    for g_fused, g_ref in zip(_grads(fused, tensors), _grads(ref, tensors)):
        assert g_fused.dtype == g_ref.dtype == torch.float32  # grads come back in the parameters' dtype
        torch.testing.assert_close(g_fused, g_ref, rtol=3e-2, atol=0.5)


def test_fused_saves_only_the_input_and_the_rank_r_activation():
    x, weight, bias, lora_a, lora_b = _inputs()
    out = FusedLoRALinear.apply(x, weight, bias, lora_a, lora_b, 1.0, 0.0, False)
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    activations = [t for t in saved if t.numel() in (21 * 4, 21 * 16)]
    assert sorted(tuple(t.shape) for t in activations) == [(3, 7, 16), (21, 4)]
    assert activations[0].data_ptr() == x.data_ptr() or activations[1].data_ptr() == x.data_ptr()  # x itself


@pytest.mark.parametrize('bits', [4, 8])
def test_fused_quantized_base_matches_reference_on_the_dequantized_weight(bits):
    from opentad_lora.peft import apply_lora

    layer = torch.nn.Sequential(torch.nn.Linear(16, 12))
    apply_lora(layer, dict(r=4, targets=['0'], quantize_bits=bits, dropout=0.2))
    lora = layer[0]
    with torch.no_grad():
        lora.lora_B['default'].weight.normal_()
    x = torch.randn(3, 7, 16, requires_grad=True)
    lora.train()
    torch.manual_seed(3)
    fused = lora(x)
    lora.fused = False
    torch.manual_seed(3)
    ref = lora(x)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    params = [x, lora.lora_A['default'].weight, lora.lora_B['default'].weight]
    for g_fused, g_ref in zip(_grads(fused, params), _grads(ref, params)):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('in_features, out_features', [(16, 40), (40, 16), (24, 24)])
@pytest.mark.parametrize('dropout', [0.0, 0.3])
def test_wide_gemm_paths_match_reference(in_features, out_features, dropout):
    """[x | xA] @ [W | sB].T (output twice as wide as the input) and [dy | g] @ [W ; A] (input twice as wide as
    the output) equal the three-op reference, with and without dropout."""
    x = torch.randn(5, 3, in_features, requires_grad=True)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    lora_a = torch.randn(4, in_features, requires_grad=True)
    lora_b = torch.randn(out_features, 4, requires_grad=True)
    tensors = (x, weight, bias, lora_a, lora_b)
    torch.manual_seed(1)
    ref = lora_linear_reference(*tensors, scaling=1.5, dropout_p=dropout, training=True)
    torch.manual_seed(1)
    fused = lora_linear(*tensors, scaling=1.5, dropout_p=dropout, training=True)
    saved_x, saved_xa = fused.grad_fn.saved_tensors[:2]  # never the wide [x | xA] operand: x itself and (N, r)
    assert saved_x.data_ptr() == x.data_ptr() and saved_xa.stride(0) == 4
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    for g_fused, g_ref in zip(_grads(fused, tensors), _grads(ref, tensors)):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-3, atol=1e-3)  # fp32 sums of ~1e3


@pytest.mark.parametrize('out_features', [12, 40])
def test_wide_gemm_under_autocast_matches_reference(out_features):
    x = torch.randn(3, 7, 16, requires_grad=True)
    tensors = (x, torch.randn(out_features, 16), None, torch.randn(4, 16, requires_grad=True),
               torch.randn(out_features, 4, requires_grad=True))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        fused = lora_linear(*tensors, scaling=0.5)
        ref = lora_linear_reference(*tensors, scaling=0.5)
    for got, want in zip((fused,) + _grads(fused, tensors), (ref,) + _grads(ref, tensors)):
        assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 1e-2  # bf16 rounding


def test_wide_layer_casts_its_input_straight_into_the_concatenated_operand(op_log):
    """Under autocast a wide layer writes the bfloat16 copy of ``x`` once, into ``[x | xA]``: no separate cast copy
    that ``torch.cat`` copies again (one pass over the input fewer per forward)."""
    x = torch.randn(3, 7, 16)
    tensors = (x, torch.randn(40, 16), None, torch.randn(4, 16), torch.randn(40, 4))
    with torch.autocast('cpu', dtype=torch.bfloat16), op_log as log:
        out = FusedLoRALinear.apply(*tensors, 0.5, 0.0, True)
    full_copies = [name for name, shape in log.made if shape in ((3, 7, 16), (21, 16)) and 'copy' in name]
    assert full_copies == ['aten.copy_.default'] and ('aten.cat.default', (21, 20)) not in log.made, log.made
    torch.testing.assert_close(out, lora_linear_reference(*[t.bfloat16() if t is not None else t for t in tensors],
                                                          scaling=0.5), rtol=1e-2, atol=1e-1)


VIEW_OPS = ('aten.empty.', 'aten.slice.', 'aten.view.', 'aten.t.', 'aten._unsafe_view.', 'aten.reshape.')


def test_wide_layer_casts_its_weight_and_scaled_b_straight_into_the_concatenated_weight(op_log):
    """Under autocast a float32 frozen weight is cast straight into ``[W | sB]`` and ``sB`` is scaled and cast by
    one op into it: no bf16 copy of W for ``torch.cat`` to copy again, no separate cast of ``sB``. Seven kernels per
    forward (casts of W, sB, A and x, ``x A.T``, its copy into ``[x | xA]``, the GEMM) where there were nine."""
    x, weight, lora_a, lora_b = torch.randn(3, 7, 16), torch.randn(40, 16), torch.randn(4, 16), torch.randn(40, 4)
    with torch.autocast('cpu', dtype=torch.bfloat16), op_log as log:
        out = FusedLoRALinear.apply(x, weight, None, lora_a, lora_b, 0.5, 0.0, True)
    kernels = [name for name in log.ops if not name.startswith(VIEW_OPS)]
    assert len(kernels) == 7 and not any('cat' in name for name in kernels), kernels
    expected = torch.cat([x.reshape(21, 16).bfloat16(), x.reshape(21, 16).bfloat16() @ lora_a.bfloat16().t()], 1) @ \
        torch.cat([weight.bfloat16(), (lora_b * 0.5).bfloat16()], 1).t()
    assert torch.equal(out.reshape(21, 40), expected)  # the same operands, bit for bit


@pytest.mark.parametrize('source,target', [(torch.float32, torch.bfloat16), (torch.float32, torch.float16),
                                           (torch.bfloat16, torch.float32), (torch.float32, torch.float32)])
@pytest.mark.parametrize('scaling', [2.0, 0.1, 1.7])
def test_scaled_is_the_product_then_the_cast(source, target, scaling):
    tensor = (torch.randn(30, 17) * 10).to(source)
    assert torch.equal(_scaled(tensor, scaling, target), (tensor * scaling).to(target))
    buffer = torch.zeros(30, 20, dtype=target)
    into = _scaled(tensor, scaling, target, out=buffer[:, 3:])
    assert into.data_ptr() == buffer[:, 3:].data_ptr() and torch.equal(buffer[:, 3:], (tensor * scaling).to(target))


@pytest.mark.parametrize('out_features', [12, 40])
def test_dropout_under_autocast_draws_the_reference_mask(out_features):
    """Under bf16 autocast the fused path draws dropout on its own bf16 copy of x; the mask must still be the one
    the reference draws on float32 x (a different mask would be off by far more than bf16 rounding)."""
    x = torch.randn(5, 3, 16, requires_grad=True)
    tensors = (x, torch.randn(out_features, 16), torch.randn(out_features), torch.randn(4, 16, requires_grad=True),
               torch.randn(out_features, 4, requires_grad=True))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        torch.manual_seed(3)
        fused = lora_linear(*tensors, scaling=1.0, dropout_p=0.3, training=True)
        torch.manual_seed(3)
        ref = lora_linear_reference(*tensors, scaling=1.0, dropout_p=0.3, training=True)
    for got, want in zip((fused,) + _grads(fused, tensors), (ref,) + _grads(ref, tensors)):
        assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 1e-2


@pytest.mark.parametrize('out_features', [64, 256])  # the addmm_ path and the wide [x | xA] path
def test_dropout_keeps_no_more_memory_than_no_dropout(out_features, saved_bytes):
    """With dropout the mask is drawn again in backward from the saved generator state: what is saved is the same
    as without dropout, up to that state (~5 KB on CPU); a kept mask and dropped copy would add N*K*5 bytes."""
    x = torch.randn(4096, 64, requires_grad=True)
    tensors = (x, torch.randn(out_features, 64), None, torch.randn(8, 64, requires_grad=True),
               torch.randn(out_features, 8, requires_grad=True))
    plain = saved_bytes(lambda: lora_linear(*tensors, scaling=1.0, dropout_p=0.0, training=True))
    dropped = saved_bytes(lambda: lora_linear(*tensors, scaling=1.0, dropout_p=0.1, training=True))
    assert dropped - plain <= 8 * 1024 < x.numel()


def test_dropout_mask_redrawn_in_backward_leaves_the_generator_as_forward_left_it():
    tensors = _inputs()
    torch.manual_seed(11)
    fused = lora_linear(*tensors, scaling=1.0, dropout_p=0.4, training=True)
    after_forward = torch.get_rng_state()
    grads = _grads(fused, tensors)
    assert torch.equal(torch.get_rng_state(), after_forward)
    torch.manual_seed(11)
    ref = lora_linear_reference(*tensors, scaling=1.0, dropout_p=0.4, training=True)
    for g_fused, g_ref in zip(grads, _grads(ref, tensors)):  # the redrawn mask is forward's mask
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('keep', [False, True])
def test_quantized_base_is_dequantized_again_in_backward_unless_kept(keep, monkeypatch):
    from opentad_lora.peft import apply_lora

    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 0)  # the fused function, whatever the size

    model = torch.nn.Sequential(torch.nn.Linear(64, 48))
    apply_lora(model, dict(r=4, targets=['0'], quantize_bits=4, keep_dequantized=keep))
    layer = model[0]
    with torch.no_grad():
        layer.lora_B['default'].weight.normal_()
    x = torch.randn(5, 64, requires_grad=True)
    out = layer(x)
    weights = [t for t in out.grad_fn.saved_tensors if t is not None and tuple(t.shape) == (48, 64)]
    assert len(weights) == int(keep)
    layer.fused = False
    ref = layer(x)
    params = [x, layer.lora_A['default'].weight, layer.lora_B['default'].weight]
    for g_fused, g_ref in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('autocast', [False, True])
def test_layers_reading_the_same_input_save_one_copy(autocast):
    """q/k/v (or gate/up) read one tensor: they keep one saved copy of it, also when autocast casts it to bf16."""
    x = torch.randn(256, 32, requires_grad=True)
    layers = [(torch.randn(out, 32), torch.randn(4, 32, requires_grad=True), torch.randn(out, 4, requires_grad=True))
              for out in (32, 96, 96)]  # the addmm_ path and twice the wide path
    storages = set()

    def pack(tensor):
        if tensor.numel() == x.numel():
            storages.add(tensor.untyped_storage().data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            outs = [lora_linear(x, w, None, a, b, scaling=1.0) for w, a, b in layers]
    assert len(storages) == 1
    if not autocast:
        assert storages == {x.untyped_storage().data_ptr()}
    sum(o.float().sum() for o in outs).backward()  # and backward still runs from the shared copy
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _layer(bits, dropout=0.0, out_features=48):
    from opentad_lora.peft import apply_lora

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, out_features))
    apply_lora(model, dict(r=4, targets=['0'], quantize_bits=bits, dropout=dropout,
                           compute_dtype='bf16' if bits == 4 else None))
    with torch.no_grad():
        model[0].lora_B['default'].weight.normal_()
    return model[0].train()


@pytest.mark.parametrize('bits', [None, 4, 8])
@pytest.mark.parametrize('autocast', [False, True])
def test_plain_path_for_few_rows_equals_the_fused_function(bits, autocast, monkeypatch):
    """Few rows (host-bound sizes) take plain autograd ops: same output and gradients as the fused function."""
    layer = _layer(bits)
    x = torch.randn(6, 5, 32, requires_grad=True)
    params = [x, layer.lora_A['default'].weight, layer.lora_B['default'].weight]
    results = []
    for max_rows in (LF.PLAIN_MAX_ROWS, 0):  # plain, then fused
        monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', max_rows)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = layer(x)
        results.append((out, _grads(out, params), type(out.grad_fn).__name__))
    (plain, plain_grads, plain_node), (fused, fused_grads, fused_node) = results
    assert 'FusedLoRALinear' not in plain_node and 'FusedLoRALinear' in fused_node
    assert plain.dtype == fused.dtype
    limit = 1e-2 if autocast else 1e-5  # the same products in the same dtype; bf16 autocast rounds them differently
    for got, want in zip((plain, *plain_grads), (fused, *fused_grads)):
        assert ((got.float() - want.float()).norm() / want.float().norm()).item() < limit


def test_dropout_and_many_rows_take_the_fused_function(monkeypatch):
    x = torch.randn(6, 32, requires_grad=True)
    assert 'FusedLoRALinear' in type(_layer(None, dropout=0.1)(x).grad_fn).__name__  # the plain path would keep masks
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 6)
    assert 'FusedLoRALinear' in type(_layer(None)(x).grad_fn).__name__
    monkeypatch.setattr(LF, 'PLAIN_MAX_ROWS', 7)
    assert 'FusedLoRALinear' not in type(_layer(None)(x).grad_fn).__name__


def test_plain_path_keeps_no_dequantized_weight():
    layer = _layer(4)
    x = torch.randn(6, 32, requires_grad=True)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        out = layer(x)
    assert 'FusedLoRALinear' not in type(out.grad_fn).__name__
    assert (48, 32) not in shapes and (6, 32) in shapes  # x is kept, the (out, in) weight is not
