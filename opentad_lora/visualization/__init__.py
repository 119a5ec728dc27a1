"""Plots and renders written as PNG files."""
