"""SHOT: source-free adaptation of the feature extractor to a frozen source classifier (hypothesis).

Liang, Hu, Feng, "Do We Really Need to Access the Source Data? Source Hypothesis Transfer for Unsupervised
Domain Adaptation", ICML 2020 (Sec. 3). Starting from a source model (``--model.weights``), the classifier
h is frozen and the feature extractor g is trained on unlabelled target images only (no source image is
ever drawn) with ``im_weight * (L_ent + L_div) + beta * L_pl``:

* information maximisation (Eqs. 2-3): ``L_ent`` the mean prediction entropy, ``L_div = sum_k p̂_k log p̂_k``
  (:func:`shiftlab.losses.mean_entropy`, :func:`shiftlab.losses.diversity`);
* self-supervised pseudo-labels (Eqs. 4-6): at the start of every epoch (the contract's
  :meth:`~shiftlab.methods.base.Method.on_train_epoch_start`, over all target adaptation images) the
  prediction-weighted class centroids of g's outputs, then the centroids of their nearest-centroid labels
  (:func:`shiftlab.losses.centroid_pseudo_labels`); ``L_pl`` the cross-entropy of each batch image against
  the class of its nearest centroid. The loop's batches carry no image indices, so the label is that of the
  image's current feature and the epoch's centroids, not the feature it had when the epoch began.

g is everything before the head's last Linear (``frozen=classifier``: the paper's hypothesis is the last
FC layer after its bottleneck) or before the whole head (``frozen=head``). Defaults: beta = 0.3 and IM
weight 1 (Sec. 4.1), centroids updated once (``rounds=1``: "updating once gives sufficiently good labels").
The paper's source model is trained with label smoothing and a weight-normalised classifier; any shiftlab
source run's checkpoint serves here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..losses import centroid_pseudo_labels, diversity, mean_entropy, nearest_centroid
from .base import Batch, Method, register_method


@register_method
class SHOT(Method):
    """Information maximisation and centroid pseudo-labels on the target, classifier frozen, no source data."""

    name = "shot"
    uses_source = False
    target_stream = "unlabelled"
    requires_trained_model = True
    search_space = {"beta": [0.0, 0.1, 0.3]}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        beta: float = Field(0.3, ge=0, description="weight of the pseudo-label cross-entropy (SHOT: 0.3)")
        im_weight: float = Field(
            1.0, ge=0, description="weight of information maximisation, entropy plus diversity (SHOT: 1)"
        )
        rounds: int = Field(1, ge=0, description="centroid updates after the prediction-weighted ones (Eq. 6; SHOT: 1)")
        frozen: Literal["classifier", "head"] = Field(
            "classifier", description="what stays fixed: the head's last Linear (SHOT's hypothesis) or the whole head"
        )

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        head = backbone.head
        frozen = backbone.classifier if params.frozen == "classifier" else head
        frozen.requires_grad_(False)
        layers = list(head.children()) if isinstance(head, nn.Sequential) else [head]
        self.embedding = nn.Sequential(*layers[:-1]) if params.frozen == "classifier" else nn.Identity()
        self.hypothesis = backbone.classifier if params.frozen == "classifier" else head
        self.register_buffer("centroids", torch.zeros(0))
        self.register_buffer("classes", torch.zeros(0, dtype=torch.long))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """g(x): the frozen part's input."""
        return self.embedding(self.backbone.forward_features(x))

    @torch.no_grad()
    def on_train_epoch_start(self, epoch: int, images) -> None:
        was_training, device = self.training, self.backbone.classifier.weight.device
        self.eval()
        features, probs = [], []
        for batch in images:
            g = self.embed((batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)).float()
            features.append(g)
            probs.append(self.hypothesis(g).softmax(1))
        _, self.centroids, self.classes = centroid_pseudo_labels(
            torch.cat(features), torch.cat(probs), self.params.rounds
        )
        self.train(was_training)

    def training_step(self, source: Batch | None, target: Batch, progress: float):
        if not len(self.classes):
            raise RuntimeError("SHOT's centroids are computed by on_train_epoch_start, which the loop calls first")
        g = self.embed(target.x)
        logits = self.hypothesis(g)
        entropy, div = mean_entropy(logits), diversity(logits)
        pl = F.cross_entropy(logits.float(), nearest_centroid(g.detach(), self.centroids, self.classes))
        loss = self.params.im_weight * (entropy + div) + self.params.beta * pl
        return {"loss": loss, "entropy": entropy, "diversity": div, "pseudo_label": pl}
