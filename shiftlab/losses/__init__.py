"""Losses shared by methods."""
from .adversarial import SOURCE, TARGET, domain_bce, entropy_weights, prediction_entropy

__all__ = ["SOURCE", "TARGET", "domain_bce", "entropy_weights", "prediction_entropy"]
