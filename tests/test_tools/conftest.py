"""Helpers for testing the command-line tools: import a ``tools/*.py`` script as a module."""
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` (the tools are scripts, not a package); ``name`` may be ``'data/x'``."""
    spec = importlib.util.spec_from_file_location(f'tool_{name.replace("/", "_")}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def load_tool() -> Callable[[str], ModuleType]:
    return _load_tool
