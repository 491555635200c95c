"""Losses shared by methods."""
from .adversarial import SOURCE, TARGET, domain_bce, entropy_weights, prediction_entropy
from .confusion import class_confusion, minimum_class_confusion
from .discrepancy import margin_disparity_loss
from .matching import discriminator_loss, generator_loss, weight_drift
from .nuclear_norm import batch_nuclear_norm

__all__ = ["SOURCE", "TARGET", "domain_bce", "entropy_weights", "prediction_entropy",
           "class_confusion", "minimum_class_confusion", "margin_disparity_loss", "batch_nuclear_norm",
           "discriminator_loss", "generator_loss", "weight_drift"]
