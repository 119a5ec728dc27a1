"""opentad_lora: LoRA and QLoRA fine-tuning of large vision models on MMEngine."""
import logging

from .version import __version__

# bitsandbytes warns at import that an optional CPU *inference* kernel package ("kernels") is missing; our QLoRA
# path dequantizes itself and never uses it, so the warning is only noise in every log.
logging.getLogger('bitsandbytes.backends.cpu.ops').setLevel(logging.ERROR)

__all__ = ['__version__']
