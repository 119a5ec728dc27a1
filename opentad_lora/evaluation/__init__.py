"""Registered metrics, one subpackage per model family; pure maths in ``functional`` modules."""
