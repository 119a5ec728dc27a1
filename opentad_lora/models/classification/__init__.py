"""Image classification: a backbone + linear head classifier (the quickstart family)."""
from .image_classifier import ImageClassifier

__all__ = ['ImageClassifier']
