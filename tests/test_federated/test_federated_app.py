"""The Flower App's pieces without a running federation: the run spec carried in Flower's run config, the
SecAgg+ settings (refused for exact), a SuperNode's partition from its node config, and the round offset of a
resumed run."""
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip('flwr')
from flwr.common import ndarrays_to_parameters  # noqa: E402

from opentad_lora.federated.app import RunSpec, client_indices  # noqa: E402
from opentad_lora.federated.params import get_parameter_names, get_parameters  # noqa: E402
from opentad_lora.federated.partition import make_partition  # noqa: E402
from opentad_lora.federated.strategy import LoRAStrategy  # noqa: E402
from opentad_lora.federated.task import FederatedTask, secagg_settings  # noqa: E402

QKV = ['q_proj', 'k_proj', 'v_proj']


def cfg(**federated) -> dict:
    lora = dict(r=2, alpha=4, seed=0, vision=dict(target_modules=QKV))
    return dict(model=dict(type='ViTLoRA', arch=dict(base='tiny', text=dict(vocab_size=64)), lora=lora),
                federated=dict(dict(strategy='fedavg', seed=0, num_clients=2), **federated))


def test_the_run_spec_travels_in_flowers_run_config():
    spec = RunSpec(cfg(), '/srv/work', resume=True)
    run_config = spec.to_run_config()
    assert set(run_config) == {'config', 'work-dir', 'resume'} and isinstance(run_config['config'], str)
    assert RunSpec.from_run_config(run_config) == spec
    with pytest.raises(ValueError, match="no 'config'.*tools/federated_train.py"):
        RunSpec.from_run_config({'config': '', 'work-dir': '', 'resume': False})


def test_secagg_settings_and_exact_is_refused():
    assert secagg_settings(cfg()['federated']) is None
    assert secagg_settings(dict(secagg=dict(enabled=False, max_weight=8.0))) is None
    assert secagg_settings(dict(secagg=dict(enabled=True, max_weight=8.0))) == dict(max_weight=8.0)
    assert FederatedTask(cfg(strategy='ffa', secagg=dict(enabled=True))).secagg == {}
    with pytest.raises(ValueError, match="'exact' needs every client's product B_k A_k"):
        FederatedTask(cfg(strategy='exact', secagg=dict(enabled=True)))
    with pytest.raises(ValueError, match='federated.secagg must be a dict'):
        FederatedTask(cfg(secagg='dict(enabled=True)'))


def test_a_supernode_takes_the_simulations_partition_from_its_node_config():
    labels = [i % 4 for i in range(40)]
    dataset = type('Labels', (), dict(__len__=lambda self: 40,
                                      get_data_info=lambda self, i: dict(gt_label=labels[i])))()
    task = FederatedTask(cfg(partition=dict(type='dirichlet', alpha=0.5, seed=3)))
    expected = make_partition(labels, 3, 'dirichlet', 0.5, 3)
    for k in range(3):
        assert client_indices(task, dataset, k, 3) == expected[k].tolist()
    assert client_indices(task, dataset, 1, None) == list(range(40))  # its own data folder, all of it
    with pytest.raises(ValueError, match='partition-id=3 is outside 0..2'):
        client_indices(task, dataset, 3, 3)


def test_a_resumed_strategy_sends_and_records_the_absolute_round():
    task = FederatedTask(cfg())
    model = task.build_model()
    arrays = get_parameters(model)
    seen = []
    strategy = LoRAStrategy('fedavg', get_parameter_names(model), arrays, round_offset=3,
                            evaluate_fn=lambda rnd, params, config: seen.append(rnd) or (0.0, {}))
    proxy = SimpleNamespace(cid='a')
    manager = SimpleNamespace(num_available=lambda: 1, sample=lambda num_clients, min_num_clients: [proxy])
    (_, fit_ins), = strategy.configure_fit(1, ndarrays_to_parameters(arrays), manager)
    assert fit_ins.config['server_round'] == 4  # Flower's round 1 of a run resumed after round 3: clients seed with 4
    strategy.evaluate(1, ndarrays_to_parameters(arrays))
    assert seen == [4] and set(strategy.rounds) == {4}
    assert np.array_equal(strategy.current[0], arrays[0])
