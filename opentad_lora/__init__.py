"""opentad_lora: LoRA and QLoRA fine-tuning of large vision models on MMEngine."""
from .version import __version__

__all__ = ['__version__']
