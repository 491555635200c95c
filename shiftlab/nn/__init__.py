"""Reusable building blocks shared by methods."""

from .adversarial import (
    ConditionalAdversary,
    DomainDiscriminator,
    GradientReversal,
    RandomizedMultilinearMap,
    ReverseGradient,
    cdan_condition,
    discriminator_from_head,
    ganin_lambda,
    multilinear_map,
    positive_features,
    reverse_gradient,
)
from .augment import StrongAugment
from .batchnorm import batchnorm_modules, batchnorm_state, load_batchnorm_state, reestimate_batchnorm
from .hooks import ForwardHooks, named_module
from .matching import (
    ActivationTaps,
    GaussianMatcher,
    channel_moments,
    last_linear_points,
    match_moments,
    resolve_points,
)
from .outputs import STAGES, check_stages, stage_outputs
from .shaping import ActivationShaper, ash_b, ash_p, ash_s, binarize_and_mask, mask_only, random_mask, select_modules

__all__ = [
    "ConditionalAdversary",
    "cdan_condition",
    "DomainDiscriminator",
    "GradientReversal",
    "RandomizedMultilinearMap",
    "ReverseGradient",
    "discriminator_from_head",
    "ganin_lambda",
    "multilinear_map",
    "positive_features",
    "reverse_gradient",
    "batchnorm_modules",
    "batchnorm_state",
    "load_batchnorm_state",
    "reestimate_batchnorm",
    "ForwardHooks",
    "named_module",
    "ActivationTaps",
    "GaussianMatcher",
    "channel_moments",
    "last_linear_points",
    "match_moments",
    "resolve_points",
    "ActivationShaper",
    "ash_b",
    "ash_p",
    "ash_s",
    "binarize_and_mask",
    "mask_only",
    "random_mask",
    "select_modules",
    "StrongAugment",
    "STAGES",
    "check_stages",
    "stage_outputs",
]
