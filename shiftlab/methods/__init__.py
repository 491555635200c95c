"""Domain-adaptation methods: one module each; ``base`` holds the contract and the registry.

The built-in methods are imported here, explicitly; a method of your own registers itself with
``@register_method`` in any module that ``experiment.plugins`` names (or that your code imports).
"""

from . import (  # noqa: F401  (registers the built-in methods)  # noqa: F401  (the adversarial family)  # noqa: F401  (the standard discriminative baselines)  # noqa: F401  (adversarial and Gaussian activation matching)  # noqa: F401  (the standard baselines, issue 30)
    activation_matching,
    activation_shaping,
    adabn,
    adapternet,  # noqa: F401  (input adaptation before a frozen classifier)
    bnm,
    cdan,
    coral,
    dan,
    dann,
    dannp,
    entropy_min,
    finetune,
    gaussian_matching,
    hda,
    mcc,
    mdd,
    oracle,
    self_training,
    shot,
    source_only,
)
from .base import METHODS, Batch, Method, build_method, get_method, method_params, register_method

__all__ = ["METHODS", "Batch", "Method", "build_method", "get_method", "method_params", "register_method"]
