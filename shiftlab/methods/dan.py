"""DAN: multi-kernel MMD between source and target activations of several layers; JAN's joint form as an option.

Long, Cao, Wang, Jordan, "Learning Transferable Features with Deep Adaptation Networks", ICML 2015: the loss
is ``CE(source) + weight * sum_l d_k^2(D_s^l, D_t^l)`` (Eq. 4) over the adapted layers ``l`` (the paper: fc6-fc8
of AlexNet; here the named stages, default the feature extractor's output and the logits), ``d_k^2`` the
multi-kernel MMD (Eqs. 1-2), a convex combination of Gaussian kernels whose bandwidths are multiples of the
batch's mean (or median) squared distance, with equal kernel weights instead of Eq. 5's quadratic program.
The estimate is the unbiased quadratic one (``estimator=quadratic``, default: batches of 64 cost little) or
the paper's linear-time unbiased one (``linear``, Eq. 6).

``joint=true``: JAN (Long, Zhu, Wang, Jordan, "Deep Transfer Learning with Joint Adaptation Networks", ICML
2017, Eqs. 8-10): one joint MMD whose kernel is the product of the layers' kernels, over the features and the
softmax predictions (``layers`` followed by ``probs``; the softmax kernel a single Gaussian of bandwidth
``softmax_sigma`` = 0.92, as in JAN's code). The weight's default, 1, is the trade-off of JAN's code; DAN's paper
chooses lambda on validation data.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..losses import joint_mmd, mk_mmd
from ..losses.kernels import DAN_MULTIPLIERS
from ..nn import check_stages, stage_outputs
from .base import Batch, Method, register_method


@register_method
class DAN(Method):
    """Source cross-entropy plus the multi-kernel MMD of the chosen layers (or JAN's joint MMD)."""

    name = "dan"
    target_stream = "unlabelled"
    search_space = {"weight": [0.1, 0.3, 1.0]}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        weight: float = Field(1.0, ge=0, description="lambda, the weight of the MMD penalty (JAN's code: 1)")
        layers: list[str] = Field(
            ["features", "logits"],
            description="adapted layers: features, bottleneck, "
            "logits (DAN adapts fc6-fc8); with joint=true the softmax is added as JAN's last",
        )
        joint: bool = Field(
            False,
            description="JAN's joint MMD over the layers and the softmax predictions, "
            "instead of DAN's sum of per-layer MK-MMDs",
        )
        multipliers: list[float] = Field(
            list(DAN_MULTIPLIERS),
            description="Gaussian bandwidths as multiples of the base squared distance (JAN's code: 2^-3 .. 2^1)",
        )
        bandwidth_base: Literal["mean", "median"] = Field(
            "mean", description="base squared distance of the bandwidths: the batch's mean (JAN's code) or median (DAN)"
        )
        estimator: Literal["quadratic", "linear"] = Field(
            "quadratic", description="MMD estimate: the unbiased quadratic U-statistic or DAN's linear-time one (Eq. 6)"
        )
        softmax_sigma: float = Field(0.92, gt=0, description="bandwidth of JAN's kernel on the softmax predictions")

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        check_stages(backbone, params.layers, "method.layers")
        layer = {"multipliers": params.multipliers, "base": params.bandwidth_base}
        self.kernels = [layer] * len(params.layers) + [{"sigma": params.softmax_sigma}]  # JAN's: + softmax

    def discrepancy(self, s: dict, t: dict):
        p = self.params
        if p.joint:
            layers = [*p.layers, "probs"]
            return joint_mmd([s[k] for k in layers], [t[k] for k in layers], self.kernels, p.estimator)
        return sum(mk_mmd(s[k], t[k], p.multipliers, p.estimator, p.bandwidth_base) for k in p.layers)

    def training_step(self, source: Batch, target: Batch, progress: float):
        s, t = stage_outputs(self.backbone, source.x), stage_outputs(self.backbone, target.x)
        ce, acc = self.classification(s["logits"], source.y)
        mmd = self.discrepancy(s, t)
        return {"loss": ce + self.params.weight * mmd, "ce": ce, "mmd": mmd, "acc": acc}
