"""Registered datasets and transforms, one subpackage per model family."""
from . import classification  # noqa: F401
