"""Install opentad_lora: ``pip install -e .`` or ``pip install -e .[tests]``.

Every ``requirements/<name>.txt`` other than ``runtime.txt`` becomes the extra ``<name>``, so a model family adds
its optional dependencies by adding one file, without touching this script.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
REQ_DIR = ROOT / 'requirements'


def read_requirements(path: Path) -> list:
    """Return the requirement lines of ``path``, skipping comments and ``-r`` includes."""
    lines = (line.split('#')[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith('-')]


def read_version() -> str:
    namespace: dict = {}
    exec((ROOT / 'opentad_lora' / 'version.py').read_text(), namespace)
    return namespace['__version__']


extras = {p.stem: read_requirements(p) for p in sorted(REQ_DIR.glob('*.txt')) if p.stem != 'runtime'}
extras['all'] = sorted({req for reqs in extras.values() for req in reqs})

setup(
    name='opentad_lora',
    version=read_version(),
    description='LoRA and QLoRA fine-tuning of large vision models on MMEngine',
    long_description=(ROOT / 'README.md').read_text(encoding='utf-8') if (ROOT / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['opentad_lora', 'opentad_lora.*']),
    include_package_data=True,
    install_requires=read_requirements(REQ_DIR / 'runtime.txt'),
    extras_require=extras,
    license='Apache-2.0',
)
