"""The weights_only checkpoint loader: MMEngine objects load, anything else is refused, bad files are named."""
import argparse
import io
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner import CheckpointLoader
from mmengine.runner.checkpoint import _load_checkpoint

from opentad_lora.engine import TRUST_ENV, CheckpointError, UnsafeCheckpointError, load_checkpoint_file
from opentad_lora.engine.checkpoint import load_from_local_safe

REPO = Path(__file__).resolve().parents[2]


def _mmengine_like_checkpoint() -> dict:
    """What a Runner checkpoint carries besides tensors: HistoryBuffers, numpy scalars/arrays, ConfigDicts."""
    hub = MessageHub.get_instance('safe_loader_test')
    for step in range(3):
        hub.update_scalar('train/loss', np.float32(0.5 / (step + 1)))
        hub.update_scalar('val/acc', np.float64(0.25 * step))
    hub.update_info('best_score', np.float64(0.75))
    hub.update_info('keep_ckpt_ids', [1, 2])
    metainfo = Config(dict(meta=dict(classes=('a', 'b'), palette=dict(a=[1, 2]))))['meta']
    return {
        'meta': dict(epoch=2, seed=0, dataset_meta=dict(metainfo), counts=np.arange(4, dtype=np.int32),
                     mask=np.array([True, False]), half=np.float16(1.5), names=np.array(['x', 'yz'])),
        'state_dict': OrderedDict(w=torch.randn(2, 3)),
        'message_hub': hub.state_dict(),
    }


def test_mmengine_objects_round_trip(tmp_path):
    original = _mmengine_like_checkpoint()
    torch.save(original, tmp_path / 'ckpt.pth')
    loaded = load_checkpoint_file(tmp_path / 'ckpt.pth')
    assert torch.equal(loaded['state_dict']['w'], original['state_dict']['w'])
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    np.testing.assert_allclose(buffer.data[0], [0.5, 0.25, 0.5 / 3], rtol=1e-6)
    assert buffer.mean(2) == pytest.approx((0.25 + 0.5 / 3) / 2)  # statistics methods survive
    meta = loaded['meta']
    assert meta['dataset_meta']['palette']['a'] == [1, 2] and meta['dataset_meta']['classes'] == ('a', 'b')
    for key in ('counts', 'mask', 'names'):
        np.testing.assert_array_equal(meta[key], original['meta'][key])
        assert meta[key].dtype == original['meta'][key].dtype
    assert meta['half'] == np.float16(1.5) and loaded['message_hub']['runtime_info']['best_score'] == 0.75


def test_numpy1_module_paths_load(tmp_path):
    """A file written under numpy 1 names ``numpy.core.multiarray``; it loads without touching np.core."""
    buffer = io.BytesIO()
    torch.save({'a': np.arange(3.0), 's': np.float64(2.5)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(tmp_path / 'np1.pth', 'w') as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith('data.pkl'):
                assert b'numpy._core.multiarray' in data
                data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
            target.writestr(info, data)
    assert 'numpy.core.multiarray._reconstruct' in torch.serialization.get_unsafe_globals_in_checkpoint(
        tmp_path / 'np1.pth')
    loaded = load_checkpoint_file(tmp_path / 'np1.pth')
    np.testing.assert_array_equal(loaded['a'], [0.0, 1.0, 2.0])
    assert loaded['s'] == 2.5


def test_other_globals_are_refused_and_listed_unless_trusted(tmp_path, monkeypatch):
    path = tmp_path / 'namespace.pth'
    torch.save({'args': argparse.Namespace(lr=0.1)}, path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(UnsafeCheckpointError, match=r"\['argparse.Namespace'\]") as err:
        load_checkpoint_file(path)
    assert str(path) in str(err.value) and TRUST_ENV in str(err.value)
    monkeypatch.setenv(TRUST_ENV, '1')
    assert load_checkpoint_file(path)['args'].lr == 0.1


class _GetattrPayload:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``: allowlisted names, forbidden use."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


def test_getattr_is_limited_to_history_buffer_statistics(tmp_path):
    path = tmp_path / 'getattr.pth'
    torch.save({'x': _GetattrPayload()}, path)
    with pytest.raises(UnsafeCheckpointError, match='__init__') as err:
        load_checkpoint_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'empty'])
def test_unreadable_files_name_the_path(tmp_path, damage):
    good = tmp_path / 'good.pth'
    torch.save({'w': torch.randn(64, 64)}, good)
    data = {'truncated': good.read_bytes()[:2000], 'garbage': b'not a checkpoint at all', 'empty': b''}[damage]
    bad = tmp_path / f'{damage}.pth'
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match='cannot be read') as err:
        load_checkpoint_file(bad)
    assert str(bad) in str(err.value) and not isinstance(err.value, UnsafeCheckpointError)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'missing.pth')):
        load_checkpoint_file(tmp_path / 'missing.pth')


def test_mmengine_local_scheme_uses_the_safe_loader(tmp_path):
    assert CheckpointLoader._get_checkpoint_loader(str(tmp_path / 'x.pth')) is load_from_local_safe
    assert CheckpointLoader._get_checkpoint_loader('https://host/x.pth').__name__ == 'load_from_http'
    torch.save(_mmengine_like_checkpoint(), tmp_path / 'runner.pth')
    assert isinstance(_load_checkpoint(str(tmp_path / 'runner.pth'))['message_hub']['log_scalars']['val/acc'],
                      HistoryBuffer)


def test_building_from_our_scope_installs_the_loader():
    """A fresh process that only builds a hook in the opentad_lora scope gets the safe loader (lazy locations)."""
    code = '\n'.join([
        'import sys',
        "sys.modules.update(bitsandbytes=None, transformers=None)  # optional, slow to import, unrelated here",
        'from mmengine.registry import HOOKS, DefaultScope',
        'from mmengine.runner import CheckpointLoader',
        'from mmengine.fileio.backends import backends',
        'import opentad_lora.registry',
        "assert CheckpointLoader._get_checkpoint_loader('a.pth').__name__ == 'load_from_local'",
        "DefaultScope.get_instance('safe_loader_probe', scope_name='opentad_lora')",
        "HOOKS.build(dict(type='CheckpointHook'))",
        "assert CheckpointLoader._get_checkpoint_loader('a.pth').__name__ == 'load_from_local_safe'",
        "assert backends['local'].__name__ == 'AtomicLocalBackend'",
    ])
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
