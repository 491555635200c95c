"""Losses shared by methods."""

from .adversarial import SOURCE, TARGET, domain_bce, entropy_weights, prediction_entropy
from .confusion import class_confusion, minimum_class_confusion
from .discrepancy import margin_disparity_loss
from .information import (
    centroid_pseudo_labels,
    diversity,
    mean_entropy,
    nearest_centroid,
    thresholded_pseudo_label_loss,
)
from .kernels import coral_loss, gaussian_kernel, joint_mmd, mk_mmd, mmd
from .matching import discriminator_loss, generator_loss, weight_drift
from .nuclear_norm import batch_nuclear_norm

__all__ = [
    "SOURCE",
    "TARGET",
    "domain_bce",
    "entropy_weights",
    "prediction_entropy",
    "class_confusion",
    "minimum_class_confusion",
    "margin_disparity_loss",
    "batch_nuclear_norm",
    "discriminator_loss",
    "generator_loss",
    "weight_drift",
    "centroid_pseudo_labels",
    "diversity",
    "mean_entropy",
    "nearest_centroid",
    "thresholded_pseudo_label_loss",
    "coral_loss",
    "gaussian_kernel",
    "joint_mmd",
    "mk_mmd",
    "mmd",
]
