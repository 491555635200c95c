"""Domain-adaptation methods: one module each; ``base`` holds the contract and the registry.

The built-in methods are imported here, explicitly; a method of your own registers itself with
``@register_method`` in any module that ``experiment.plugins`` names (or that your code imports).
"""
from . import activation_shaping, adabn, finetune, oracle, source_only  # noqa: F401  (registers the built-in methods)
from . import dann, dannp, hda  # noqa: F401  (the adversarial family)
from . import bnm, cdan, mcc, mdd  # noqa: F401  (the standard discriminative baselines)
from . import activation_matching, gaussian_matching  # noqa: F401  (adversarial and Gaussian activation matching)
from . import adapternet  # noqa: F401  (input adaptation before a frozen classifier)
from . import coral, dan, entropy_min, self_training, shot  # noqa: F401  (the standard baselines, issue 30)
from .base import METHODS, Batch, Method, build_method, get_method, method_params, register_method

__all__ = ["METHODS", "Batch", "Method", "build_method", "get_method", "method_params", "register_method"]
