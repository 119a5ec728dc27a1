"""tools/data/make_synthetic_clip.py: a missing requirement stops it before anything is written; a failure
part-way removes the folder it created."""
import importlib.util
import sys
from pathlib import Path

import pytest

from opentad_lora.models.clip import tokenizer

TOOL = Path(__file__).resolve().parents[3] / 'tools' / 'data' / 'make_synthetic_clip.py'


@pytest.fixture()
def tool():
    spec = importlib.util.spec_from_file_location('make_synthetic_clip_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_regex_stops_before_writing(tool, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'regex', None)  # `import regex` now raises ImportError
    tokenizer._compiled_pattern.cache_clear()
    try:
        with pytest.raises(SystemExit, match='needs the "regex" package.*Nothing was written') as exit_info:
            tool.main(['--out', str(tmp_path / 'out')])
    finally:
        tokenizer._compiled_pattern.cache_clear()
    assert exit_info.value.code != 0
    assert not (tmp_path / 'out').exists()


def test_a_failure_part_way_removes_the_new_folder(tool, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(tool, 'write_pretrained_clip', fail)  # after the PNGs and the BPE file were written
    with pytest.raises(OSError, match='disk full'):
        tool.main(['--out', str(tmp_path / 'out'), '--train-per-class', '1', '--val-per-class', '1'])
    assert not (tmp_path / 'out').exists()
