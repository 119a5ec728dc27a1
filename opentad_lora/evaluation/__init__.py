"""Registered metrics, one subpackage per model family; pure maths in ``functional`` modules."""
from . import classification  # noqa: F401
from . import tad  # noqa: F401
from . import hamer  # noqa: F401
from . import depth  # noqa: F401
from . import cad  # noqa: F401
