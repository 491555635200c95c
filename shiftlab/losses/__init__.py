"""Losses shared by methods."""
from .adversarial import SOURCE, TARGET, domain_bce, entropy_weights, prediction_entropy
from .information import (centroid_pseudo_labels, diversity, mean_entropy, nearest_centroid,
                          thresholded_pseudo_label_loss)
from .kernels import coral_loss, gaussian_kernel, joint_mmd, mk_mmd, mmd
from .matching import discriminator_loss, generator_loss, weight_drift

__all__ = ["SOURCE", "TARGET", "domain_bce", "entropy_weights", "prediction_entropy",
           "discriminator_loss", "generator_loss", "weight_drift",
           "centroid_pseudo_labels", "diversity", "mean_entropy", "nearest_centroid", "thresholded_pseudo_label_loss",
           "coral_loss", "gaussian_kernel", "joint_mmd", "mk_mmd", "mmd"]
