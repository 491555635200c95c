"""Reusable building blocks shared by methods."""
from .batchnorm import batchnorm_modules, batchnorm_state, load_batchnorm_state, reestimate_batchnorm

__all__ = ["batchnorm_modules", "batchnorm_state", "load_batchnorm_state", "reestimate_batchnorm"]
