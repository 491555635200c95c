"""Reusable building blocks shared by methods."""
from .adversarial import (DomainDiscriminator, GradientReversal, RandomizedMultilinearMap, ReverseGradient,
                          discriminator_from_head, ganin_lambda, multilinear_map, positive_features, reverse_gradient)
from .batchnorm import batchnorm_modules, batchnorm_state, load_batchnorm_state, reestimate_batchnorm
from .shaping import (ActivationShaper, ash_b, ash_p, ash_s, binarize_and_mask, mask_only, random_mask,
                      select_modules)

__all__ = ["batchnorm_modules", "batchnorm_state", "load_batchnorm_state", "reestimate_batchnorm",
           "ActivationShaper", "ash_b", "ash_p", "ash_s", "binarize_and_mask", "mask_only", "random_mask",
           "select_modules"]
__all__ += ["DomainDiscriminator", "GradientReversal", "RandomizedMultilinearMap", "ReverseGradient",
            "discriminator_from_head", "ganin_lambda", "multilinear_map", "positive_features", "reverse_gradient"]
from .matching import ActivationTaps, GaussianMatcher, channel_moments, last_linear_points, match_moments, resolve_points

__all__ += ["ActivationTaps", "GaussianMatcher", "channel_moments", "last_linear_points", "match_moments",
            "resolve_points"]
