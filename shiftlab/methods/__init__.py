"""Domain-adaptation methods: one module each; ``base`` holds the contract and the registry."""
from .base import METHODS, Batch, Method, build_method, get_method, method_params, register_method

__all__ = ["METHODS", "Batch", "Method", "build_method", "get_method", "method_params", "register_method"]
