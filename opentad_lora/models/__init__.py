"""Registered models. Each model family is a subpackage; importing this package registers all of them."""
from . import backbones, classification, layers  # noqa: F401
from . import tad  # noqa: F401
from . import hamer  # noqa: F401
from . import depth  # noqa: F401
from . import clip  # noqa: F401
from . import lora_model  # noqa: F401
from . import cad  # noqa: F401
