"""A 2-client x 2-round Flower simulation (Ray backend) of federated LoRA on synthetic CLIP data, through
tools/federated_train.py: the global accuracy rises over round 0 and every artefact is written."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('flwr')
pytest.importorskip('ray')

from opentad_lora.datasets.clip import write_synthetic_clip_data  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def load_tool(relative: str):
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f'fed_tool_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_clients_two_rounds_exact_lora_improve_the_global_model(tmp_path):
    data = tmp_path / 'data'
    info = write_synthetic_clip_data(data, num_classes=4, train_per_class=24, val_per_class=8)
    load_tool('tools/data/make_synthetic_clip.py').write_pretrained_clip(
        dict(base='tiny', text=dict(vocab_size=1024)), data / 'pretrained.pth', seed=0)
    names = '[' + ','.join(f'"{n}"' for n in info['class_names']) + ']'
    options = {'model.clip.pretrained': data / 'pretrained.pth', 'model.tokenizer.bpe_path': info['bpe_path'],
               'train_dataset.data_root': data / 'train', 'test_dataset.data_root': data / 'val',
               'federated.num_clients': 2, 'federated.num_rounds': 2, 'federated.local_epochs': 3,
               'federated.strategy': 'exact', 'federated.residual': 'base', 'optim_wrapper.optimizer.lr': 0.01,
               # One Ray actor serves both clients in turn: half the worker start-up (imports) of one per client.
               'federated.client_cpus': 2, 'federated.ray_cpus': 2}
    work = tmp_path / 'work'
    rows = load_tool('tools/federated_train.py').main([
        str(REPO / 'configs' / 'clip' / 'federated_tiny_synthetic.py'), '--work-dir', str(work), '--cfg-options',
        *(f'{k}={v}' for k, v in options.items()), f'model.class_names={names}'])
    assert [row['round'] for row in rows] == [0, 1, 2]
    assert rows[2]['top1'] >= rows[0]['top1'] + 20.0
    assert rows[2]['loss'] < rows[0]['loss']
    assert [(r['accepted'], r['rejected'], r['empty']) for r in rows[1:]] == [(2, 0, 0), (2, 0, 0)]
    # Traffic: each client sends its LoRA tensors; it receives those plus one dense residual per LoRA layer.
    lora = 2 * 2 * 4 * 2  # towers x layers x q/k/v/out x (A, B)
    header = 128  # bytes of a serialised .npy header for these small arrays
    lora_bytes = 2 * 2 * 4 * (2 * 4 * 32 * 4) + lora * header  # A (4, 32) and B (32, 4) in float32
    residual_bytes = 2 * 2 * 4 * (32 * 32 * 4 + header)
    assert rows[1]['up_bytes'] == 2 * lora_bytes
    assert rows[1]['down_bytes'] == 2 * (lora_bytes + residual_bytes)
    assert rows[2]['cum_bytes'] == 2 * (rows[1]['up_bytes'] + rows[1]['down_bytes'])
    for round_ in range(3):
        folder = work / 'adapters' / f'round_{round_:03d}'
        assert (folder / 'adapter_model.safetensors').is_file() and (folder / 'adapter_config.json').is_file()
        with np.load(folder / 'residual.npz') as residual:
            nonzero = any(np.abs(residual[k]).max() > 0 for k in residual.files)
            assert len(residual.files) == 16 and nonzero == (round_ > 0)  # round 0 has no residual yet
    assert json.loads((work / 'history.json').read_text()) == rows
    assert (work / 'accuracy.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
