"""CADRecodeLoRA: point encoder maths, exact QLoRA wrapping, overfitting a few programs with greedy decoding."""
import math

import pytest
import torch

from opentad_lora.models.cad import FourierPointEncoder

PROJECTIONS = {'self_attn': ['q_proj', 'k_proj', 'v_proj', 'o_proj'], 'mlp': ['gate_proj', 'up_proj', 'down_proj']}


def test_point_encoder_is_cad_recodes_fourier_projection():
    encoder = FourierPointEncoder(hidden_size=5, num_freqs=8)
    assert encoder.projection.in_features == 51  # 3 + 2 * 3 * 8, as CAD-Recode
    point = [0.3, -0.7, 0.1]
    features = list(point)
    features += [math.sin(c * 2 ** k) for c in point for k in range(8)]
    features += [math.cos(c * 2 ** k) for c in point for k in range(8)]
    expected = encoder.projection.weight.detach().double() @ torch.tensor(features, dtype=torch.float64) \
        + encoder.projection.bias.detach().double()
    out = encoder(torch.tensor([[point]]))
    assert out.shape == (1, 1, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0].double(), expected, atol=1e-5, rtol=1e-5)


def test_qlora_wraps_exactly_the_targeted_projections(make_model, make_lora):
    import bitsandbytes as bnb

    model = make_model(lora=make_lora(quantize_bits=4, compute_dtype='bf16'))
    expected = {f'llm.model.layers.{i}.{block}.{name}' for i in range(2) for block, names in PROJECTIONS.items()
                for name in names}
    assert set(model.lora_report.wrapped) == expected
    for name in expected:
        layer = model.get_submodule(name)
        assert type(layer.base_layer) is bnb.nn.Linear4bit
        assert layer.base_layer.weight.quant_type == 'nf4' and layer.base_layer.compute_dtype == torch.bfloat16
        assert layer.lora_A['default'].weight.dtype == torch.float32  # float32 master weights, bf16 compute
    # Only LoRA A/B and the point encoder train; embeddings (tied lm_head), norms stay frozen float.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {f'{m}.lora_{ab}.default.weight' for m in expected for ab in 'AB'}
    assert trainable == lora | {'point_encoder.projection.weight', 'point_encoder.projection.bias'}
    assert model.point_encoder.projection.weight.dtype == torch.float32
    assert type(model.llm.model.embed_tokens) is torch.nn.Embedding and type(model.llm.lm_head) is torch.nn.Linear
    # r * (in + out) per projection of a layer: q 32->32, k/v 32->16, o 32->32, gate/up 32->64, down 64->32.
    per_layer = 8 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 2 * (32 + 64) + (64 + 32))
    assert model.lora_report.trainable == 2 * per_layer + 51 * 32 + 32


def test_missing_targets_and_token_ids_fail_clearly(make_model, make_lora, cad_batch):
    with pytest.raises(ValueError, match='qkv'):
        make_model(lora=dict(r=4, targets=['qkv']))
    model = make_model()
    samples = [s.clone() for s in cad_batch['data_samples']]
    for sample in samples:
        del sample.input_ids
    with pytest.raises(KeyError, match='TokenizeCADCode'):
        model(cad_batch['inputs'], samples, mode='loss')


@pytest.mark.parametrize('quantized', [False, True], ids=['lora', 'qlora'])
def test_tiny_model_overfits_and_greedy_decoding_reproduces_programs(make_model, make_lora, cad_batch, quantized):
    lr = 1e-2
    extra = dict(quantize_bits=4, compute_dtype='bf16') if quantized else {}
    model = make_model(lora=make_lora(**extra))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    inputs, samples = cad_batch['inputs'], cad_batch['data_samples']
    model.train()
    losses = []
    for _ in range(100):
        loss = model(inputs, samples, mode='loss')['loss']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 4.0 and losses[-1] < 0.1 * losses[0]
    model.eval()
    predictions = model(inputs, samples, mode='predict')
    assert [p.pred_code for p in predictions] == [s.gt_code for s in samples]
    assert predictions[0].sample_idx == 0 and 'input_ids' not in predictions[0]
