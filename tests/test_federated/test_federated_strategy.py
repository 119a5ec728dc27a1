"""Flower strategy and client without the simulation engine: update validation, empty partitions, the exact
aggregation's residual in the base weights, FFA's shared A."""
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip('flwr')
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402

from opentad_lora.federated.aggregation import aggregate  # noqa: E402
from opentad_lora.federated.client import LoRAClient  # noqa: E402
from opentad_lora.federated.params import get_parameter_names, get_parameters  # noqa: E402
from opentad_lora.federated.strategy import LoRAStrategy  # noqa: E402
from opentad_lora.federated.task import FederatedTask  # noqa: E402
from opentad_lora.peft import iter_lora_layers  # noqa: E402

QKV = ['q_proj', 'k_proj', 'v_proj']


def task_cfg(strategy: str = 'fedavg', residual: str = 'none', seed: int = 0) -> dict:
    lora = dict(r=2, alpha=4, seed=seed, vision=dict(target_modules=QKV), text=dict(target_modules=['out_proj']))
    return dict(model=dict(type='ViTLoRA', arch=dict(base='tiny', text=dict(vocab_size=64)), lora=lora),
                federated=dict(strategy=strategy, residual=residual, seed=0))


def fit_res(arrays, num_examples: int, partition_id: int, **metrics) -> tuple:
    res = FitRes(status=Status(code=Code.OK, message=''), parameters=ndarrays_to_parameters(list(arrays)),
                 num_examples=num_examples, metrics=dict(partition_id=partition_id, **metrics))
    return SimpleNamespace(cid=f'node{partition_id}'), res


def random_like(arrays, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=a.shape).astype(np.float32) for a in arrays]


def test_bad_updates_are_rejected_and_the_round_goes_on(caplog):
    task = FederatedTask(task_cfg())
    model = task.build_model()
    names, init = get_parameter_names(model), get_parameters(model)
    strategy = LoRAStrategy('fedavg', names, init)
    good1, good2 = random_like(init, 1), random_like(init, 2)
    wrong_shape = good1[:3] + [np.zeros((7, 7), np.float32)] + good1[4:]
    with_nan = [a.copy() for a in good2]
    with_nan[0][0, 0] = np.nan
    results = [fit_res(good1, 30, 0), fit_res(wrong_shape, 30, 1), fit_res(good2, 10, 2),
               fit_res(good1[:-1], 30, 3), fit_res(with_nan, 30, 4), fit_res(init, 0, 5, empty_partition=1)]
    with caplog.at_level(logging.WARNING):
        params, metrics = strategy.aggregate_fit(1, results, [])
    expected, _ = aggregate('fedavg', [good1, good2], [30, 10], strategy.layout)
    for got, want in zip(parameters_to_ndarrays(params), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    log = caplog.text
    assert 'rejected the update of client 1: array 3 has shape (7, 7), expected (32, 2)' in log
    assert f'rejected the update of client 3: sent {len(init) - 1} arrays, expected {len(init)}' in log
    assert 'rejected the update of client 4: array 0 has NaN or infinite values' in log
    assert 'client 5 has an empty partition' in log
    assert metrics['clients'] == 2
    row = strategy.rounds[1]
    assert (row['accepted'], row['rejected'], row['empty']) == (2, 3, 1)
    assert row['up_bytes'] == sum(sum(len(t) for t in r.parameters.tensors) for _, r in results)
    # Nothing valid: the global state is kept (Flower keeps the previous parameters on None).
    assert strategy.aggregate_fit(2, [fit_res(wrong_shape, 5, 1)], [])[0] is None


def seeded_model(task: FederatedTask):
    """The task's model with the same random base as every other call (a stand-in for one pretrained file)."""
    torch.manual_seed(0)
    return task.build_model()


def effective_weights(model) -> dict:
    """Each LoRA layer's weight as the model computes with it: base + s * B @ A."""
    return {name: (layer.base_weight().double() + layer.delta_weight(layer.active_adapter).double()).detach()
            for name, layer in iter_lora_layers(model)}


def test_exact_with_residual_makes_the_global_model_the_mean_of_the_client_models():
    task = FederatedTask(task_cfg('exact', 'base'))
    server, clients = seeded_model(task), [seeded_model(task), seeded_model(task)]
    initial = task.global_state(server)
    strategy = LoRAStrategy('exact', get_parameter_names(server), initial, residual='base')
    counts, updates = [3, 1], []
    for seed, client in enumerate(clients):
        task.load_global(client, initial)
        update = random_like(get_parameters(client), seed)
        task.load_global(client, update + initial[len(update):])
        updates.append(update)
    for round_ in (1, 2):  # the second round starts from a global state that carries a residual
        params, _ = strategy.aggregate_fit(round_, [fit_res(u, n, i) for i, (u, n) in
                                                    enumerate(zip(updates, counts))], [])
        arrays = parameters_to_ndarrays(params)
        task.load_global(server, arrays)
        clients_now = [effective_weights(c) for c in clients]
        mean = {k: (3 * clients_now[0][k] + clients_now[1][k]) / 4 for k in clients_now[0]}
        global_now = effective_weights(server)
        assert max(float((global_now[k] - mean[k]).abs().max()) for k in mean) < 1e-5
        residual_norm = sum(float(np.abs(r).sum()) for r in arrays[len(updates[0]):])
        assert residual_norm > 0  # rank 2 could not hold the mean of two rank-2 updates
        for client in clients:  # the clients start the next round from the global state and keep training
            task.load_global(client, arrays)
        updates = [random_like(u, 10 + round_ + i) for i, u in enumerate(updates)]
        for client, update in zip(clients, updates):
            task.load_global(client, update + arrays[len(update):])


def test_ffa_clients_train_b_only_and_refuse_a_different_a():
    server = FederatedTask(task_cfg('ffa', seed=0))
    model = server.build_model()
    assert get_parameter_names(model) and all('.lora_B.' in n for n in get_parameter_names(model))
    from opentad_lora.federated.task import lora_a_digest
    digest = lora_a_digest(model)
    same = LoRAClient(FederatedTask(task_cfg('ffa', seed=0)), 0, [])
    assert lora_a_digest(same.model) == digest
    other = LoRAClient(FederatedTask(task_cfg('ffa', seed=1)), 1, [4, 5])
    with pytest.raises(ValueError, match="differs from the server's.*lora.seed"):
        other.fit(get_parameters(model), dict(lora_a_digest=digest, server_round=1))


def test_a_client_with_an_empty_partition_reports_it():
    client = LoRAClient(FederatedTask(task_cfg()), 3, [])
    params = get_parameters(client.model)
    returned, count, metrics = client.fit(params, dict(server_round=1))
    assert count == 0 and metrics == dict(partition_id=3, empty_partition=1)
    assert all(np.array_equal(a, b) for a, b in zip(returned, params))
    assert client.evaluate(params, {})[1] == 0


def test_federated_runs_reject_trainable_tensors_that_are_never_exchanged():
    cfg = task_cfg()
    cfg['model']['lora'] = dict(enabled=False)
    with pytest.raises(ValueError, match='exchanges LoRA tensors only'):
        FederatedTask(cfg).build_model()
    with pytest.raises(ValueError, match="'base' only with strategy='exact'"):
        FederatedTask(task_cfg('fedavg', 'base'))


def test_residual_into_a_quantized_base_is_refused_with_the_alternative_named():
    cfg = task_cfg('exact', 'base')
    cfg['model']['lora']['quantize_bits'] = 4
    with pytest.raises(ValueError, match="residual='none' with QLoRA"):
        FederatedTask(cfg).build_model()
    cfg['federated']['residual'] = 'none'
    assert FederatedTask(cfg).build_model() is not None  # QLoRA with exact aggregation and no residual is fine
