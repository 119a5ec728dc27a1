"""Registered metrics, one subpackage per model family; pure maths in ``functional`` modules."""
from . import classification  # noqa: F401
