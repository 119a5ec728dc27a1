"""Federated LoRA fine-tuning with Flower: parameter exchange, aggregation maths, partitions, client and strategies.

Importing this package needs numpy and torch only; Flower (``pip install "flwr[simulation]"``) is imported by the
client/strategy/simulation modules when used.
"""
from .params import get_parameter_names, get_parameters, get_parameters_dict, is_lora_param, set_parameters

__all__ = ['get_parameter_names', 'get_parameters', 'get_parameters_dict', 'is_lora_param', 'set_parameters']
