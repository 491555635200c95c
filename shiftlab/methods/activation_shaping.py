"""Activation shaping: cross-entropy on the source while hooks binarize and mask chosen activations.

The study "Activation Shaping for Domain Adaptation" (AML 2023/24, ResNet-18 on PACS): a hook on a module
replaces its output A by ``A_bin * M_bin`` (:mod:`shiftlab.nn.shaping`), M random with a fraction
``mask_ratio`` of zeros (``maps=random``) or the binarized activation of the same module on the step's
target batch (``maps=target``: a recording pass without gradient, then the source pass). Also ``A * M_bin``
and ASH-P/B/S (Djurisic et al., ICLR 2023) as ``mode``.

``at_eval`` defaults to the study's choice, shaping at evaluation too: its mask ratio 1.0 scores 17.28% on
cartoon, exactly the share of art_painting's most frequent class, person, in cartoon (405 / 2344), i.e. a
constant prediction, which a conv1 zeroed at test time gives and an unshaped one, feeding layers trained on zeros, hardly would.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError
from ..nn import ActivationShaper, batchnorm_state, load_batchnorm_state
from ..nn.shaping import EVAL_MAPS, MAP_MODES, MAPS, MODES, as_names
from ..utils import unknown_choice_error
from .base import Batch, Method, register_method


@register_method
class ActivationShaping(Method):
    """Source cross-entropy with activation-shaping hooks (the study's A_bin * M_bin, A * M_bin, ASH-P/B/S)."""

    name = "activation_shaping"
    # the loop loads the streams the instance asks for: random maps read no target image (see __init__)
    target_stream = "unlabelled"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        layers: list[str] = Field(
            "conv1",
            validate_default=True,
            description=(
                "modules to shape, comma-separated names inside the feature extractor (conv1,layer2.0.conv2,"
                "layer1.1.relu); ignored when only method.types is set"
            ),
        )
        types: list[str] = Field(
            "",
            validate_default=True,
            description=(
                "shape the modules of these classes (Conv2d,BatchNorm2d,ReLU, any torch.nn class) instead; with "
                "method.layers also set, the named modules of these classes"
            ),
        )
        every: int = Field(1, ge=1, description="shape every X-th of the matching modules, from the first")
        mask_ratio: float = Field(0.5, ge=0, le=1, description="fraction of zeros in random maps M (the study's r)")
        maps: str = Field(
            "random",
            description=(
                "where M comes from: 'random' (fresh each forward) or 'target' (binarized activation of the "
                "same module on the step's target batch, cycled over the source batch)"
            ),
        )
        mode: str = Field(
            "binarize_mask",
            description=(
                "'binarize_mask' (A_bin*M_bin), 'mask' (A*M_bin), or ASH 'ash_p' / 'ash_b' / 'ash_s' (no map)"
            ),
        )
        percentile: float = Field(65.0, ge=0, le=100, description="ASH: share (%) of each sample's activation pruned")
        at_eval: bool = Field(
            True,
            description=(
                "shape at evaluation too (the study's choice): random maps drawn as in training, target maps "
                "follow method.eval_maps"
            ),
        )
        eval_maps: str = Field(
            "own_batch",
            description=(
                "with maps=target and at_eval, the maps at evaluation (the study does not say): 'own_batch' (each "
                "evaluated batch is its own map, so the shaped output is A_bin) or 'fixed_target' (maps recorded "
                "before each evaluation on the first evaluation batch of the target's adaptation images, in their "
                "fixed order, with the weights of that moment; evaluated image i of a batch takes map i mod n)"
            ),
        )

        @field_validator("layers", "types", mode="before")
        @classmethod
        def _comma_separated(cls, value):
            return as_names(value)

        @field_validator("maps", "mode", "eval_maps")
        @classmethod
        def _known(cls, value, info):
            choices = {"maps": MAPS, "mode": MODES, "eval_maps": EVAL_MAPS}[info.field_name]
            if value not in choices:
                raise ValueError(unknown_choice_error(f"method.{info.field_name}", value, choices))
            return value

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        p = params
        if p.maps == "target" and p.mode not in MAP_MODES:
            raise ConfigError(
                f"method.maps=target needs a mode that reads a map ({', '.join(MAP_MODES)}); "
                f"'{p.mode}' prunes by percentile"
            )
        self.target_stream = "unlabelled" if p.maps == "target" else "none"
        names = p.layers if "layers" in p.model_fields_set or not p.types else None
        self.shaper = ActivationShaper(
            backbone.features,
            names,
            p.types,
            p.every,
            mode=p.mode,
            maps=p.maps,
            mask_ratio=p.mask_ratio,
            percentile=p.percentile,
            at_eval=p.at_eval,
            eval_maps=p.eval_maps,
        )

    def training_step(self, source: Batch, target: Batch | None, progress: float):
        if self.params.maps == "target":
            self.record_target_maps(target.x)
        return self.classification_step(source)

    def before_evaluation(self, domain: str, images) -> None:
        """``eval_maps=fixed_target``: record the evaluation maps on the first batch of the target's adaptation
        images (no label read), in eval mode, before each domain's evaluation (the same images both times)."""
        p = self.params
        if p.maps != "target" or not p.at_eval or p.eval_maps != "fixed_target":
            return
        if images is None:
            raise RuntimeError("method.eval_maps=fixed_target needs the target's adaptation images before evaluation")
        x = next(iter(images))
        x = x[0] if isinstance(x, (tuple, list)) else x
        self.record_target_maps(x.to(next(self.backbone.parameters()).device), for_eval=True)

    def record_target_maps(self, x, for_eval: bool = False):
        """One pass of the target batch, without gradient, that records M; it leaves the BatchNorm running
        statistics as they were, so the target images change only the maps, not what evaluation uses."""
        stats = batchnorm_state(self.backbone)
        with self.shaper.recording(for_eval), torch.no_grad():
            self.backbone(x)
        load_batchnorm_state(self.backbone, stats)
