"""Losses shared by methods."""
from .adversarial import SOURCE, TARGET, domain_bce, entropy_weights, prediction_entropy
from .matching import discriminator_loss, generator_loss, weight_drift

__all__ = ["SOURCE", "TARGET", "domain_bce", "entropy_weights", "prediction_entropy",
           "discriminator_loss", "generator_loss", "weight_drift"]
