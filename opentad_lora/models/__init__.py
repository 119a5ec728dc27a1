"""Registered models. Each model family is a subpackage; importing this package registers all of them."""
