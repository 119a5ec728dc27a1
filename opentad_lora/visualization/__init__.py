"""Plots and renders written as PNG files."""
from . import vis_backend  # noqa: F401
from . import depth  # noqa: F401
