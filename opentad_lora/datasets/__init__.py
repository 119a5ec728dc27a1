"""Registered datasets and transforms, one subpackage per model family."""
