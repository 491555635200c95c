"""Gaussian i.i.d. matching of a trained model: training-free, at evaluation only.

Huang, Huang, Krähenbühl, "Domain transfer through deep activation matching", ECCV 2018, Eq. 2 and the
affine map before it (read from images of the paper's equations in a public summary, xiaosean.github.io,
2018-10-01): under the model that each channel's activations are i.i.d. Gaussian, the target activations
at chosen layers are given the source's distribution by the per-channel affine map
``alpha = sigma_s / sigma_t``, ``beta = mu_s - alpha * mu_t`` (:class:`~shiftlab.nn.matching.GaussianMatcher`).
The paper's Table 3 reports it alone ("i.i.d Gaussian matching") for GTA -> Cityscapes. How it differs
from AdaBN: see :mod:`shiftlab.nn.matching`. The adversarial form of the paper (Eq. 3) is
:mod:`shiftlab.methods.activation_matching`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..nn.matching import LAYERS_HELP, GaussianMatcher, layer_points
from .base import register_method
from .source_only import SourceOnly


@register_method
class GaussianMatching(SourceOnly):
    """Gaussian i.i.d. matching of a trained model (Huang et al., ECCV 2018, Eq. 2), training-free.

    Before each target evaluation the target statistics are measured layer by layer (each layer with the
    earlier ones matched) on the unlabelled adaptation images; the source statistics are those of the same
    model on the **source validation images**, measured during the source evaluation that the loop runs
    first (``before_evaluation("source")`` starts the recording, the loop's own forward passes over
    ``source_val`` feed it; no label is read). Source evaluation itself is unmatched. Use with
    ``--model.weights=<source-only run>/checkpoints/best.pt --train.epochs=0``; training, if asked for, is
    source-only's (the matching is an evaluation-time change, like AdaBN's).
    """

    name = "gaussian_matching"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        layers: str | list[str] = Field("auto", description=LAYERS_HELP)
        max_batches: int | None = Field(None, ge=1, description="target batches used for the statistics (all if unset)")
        eps: float = Field(1e-5, gt=0, description="added to the target standard deviation before dividing")

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        # not a child module: its statistics are re-measured at every evaluation and stay out of checkpoints
        object.__setattr__(
            self, "matcher", GaussianMatcher(backbone, layer_points(backbone, params.layers), params.eps)
        )
        self._phase = None

    def before_evaluation(self, domain: str, images) -> None:
        m = self.matcher
        if domain == "source":
            m.record_source()  # the loop's source_val pass that follows feeds the source statistics
            self._phase = "source"
            return
        m.stop_recording()
        if self._phase != "source":
            raise RuntimeError(
                "gaussian_matching reads the source statistics during the source evaluation, which "
                "must come before the target's (the training loop's order)"
            )
        device = next(self.backbone.parameters()).device
        m.to(device)
        m.estimate_target(self.backbone, images, device, self.params.max_batches)
        m.active = True
        self._phase = "target"

    def after_evaluation(self) -> None:
        self.matcher.stop_recording()
        self.matcher.active = False
