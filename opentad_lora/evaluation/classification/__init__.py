"""Classification metrics (pure maths in ``functional``)."""
from .accuracy import ClsAccuracy
from .functional import topk_accuracy

__all__ = ['ClsAccuracy', 'topk_accuracy']
