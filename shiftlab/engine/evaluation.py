"""Evaluation of a run's model: accuracy and loss on every labelled set, per-class accuracy on the target,
and the unsupervised validators' scores on the target's adaptation images (which read no label)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import TrainingDivergedError
from ..selection.validators import score_all
from .loaders import RunLoaders


class Evaluator:
    """Evaluates ``method`` on the loaders' sets; counts are summed on the device and read once per set."""

    def __init__(
        self,
        method,
        loaders: RunLoaders,
        classes: list[str],
        autocast: Callable[[], contextlib.AbstractContextManager],
        channels_last: bool = False,
    ):
        self.method, self.loaders, self.classes = method, loaders, classes
        self.autocast, self.channels_last = autocast, channels_last
        self.device, self.dist = loaders.device, loaders.dist
        self.validators, self.progress = loaders.cfg.train.validators, loaders.cfg.train.progress

    def evaluate(self) -> tuple[dict[str, float], dict[str, float]]:
        """Every evaluation set's ``<name>_acc`` / ``<name>_loss`` and the validators' ``unsup_<name>``, and the
        target's per-class accuracy; ``before_evaluation`` runs once per domain (AdaBN re-estimates once)."""
        out: dict[str, float] = {}
        per_class: dict[str, float] = {}
        sets = self.loaders.eval_sets
        for domain in ("source", "target"):
            self.method.eval()
            # the target's unlabelled adaptation images before either domain (activation shaping's fixed target maps)
            self.method.before_evaluation(domain, self.loaders.target_images)
            try:
                reuse = self.loaders.validators_reuse_target_pass and self.validators
                target_probs: list | None = [] if reuse else None
                for name in [k for k, (d, _) in sets.items() if d == domain]:
                    acc, loss, correct, count = self.accuracy(
                        sets[name][1], name, target_probs if name == "target" else None
                    )
                    out[f"{name}_acc"], out[f"{name}_loss"] = acc, loss
                    if name == "target":
                        per_class = {
                            c: correct[i].item() / count[i].item() for i, c in enumerate(self.classes) if count[i] > 0
                        }
                if domain == "target" and self.validators:
                    out.update(score_all(self._validator_probabilities(target_probs), self.validators))
            finally:
                self.method.after_evaluation()
        self._check_finite(out)
        return out, per_class

    def _validator_probabilities(self, target_probs: list | None) -> torch.Tensor:
        if not target_probs:
            return self.probabilities(self.loaders.validator_images)
        probs = torch.cat(target_probs)
        indices = self.loaders.validator_indices
        return probs if indices is None else probs[torch.as_tensor(indices)]

    @staticmethod
    def _check_finite(metrics: dict[str, float]) -> None:
        bad = [k for k, v in metrics.items() if k.endswith("_loss") and not torch.isfinite(torch.tensor(v))]
        if bad:
            raise TrainingDivergedError(
                f"evaluation loss {bad[0]} is {metrics[bad[0]]}: the model's outputs are "
                f"not finite; no checkpoint of this epoch was written: lower optim.lr or "
                f"check the data"
            )

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def accuracy(self, loader, what: str, probs: list | None = None):
        """Accuracy, mean loss, and per-class (correct, count) over a labelled loader; the softmax outputs are
        appended to ``probs`` when it is given (on the CPU, in the set's order, gathered over ranks).

        Counts and the loss are summed on the device (one-hot sums: exact and deterministic) and read once
        at the end, not per batch; under torchrun each rank's part is summed over the ranks."""
        self.method.eval()
        n = len(self.classes)
        correct = torch.zeros(n, dtype=torch.long, device=self.device)
        count = torch.zeros(n, dtype=torch.long, device=self.device)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        outputs = []
        for x, y in tqdm(loader, desc=f"eval {what}", disable=not self.progress, leave=False):
            x, y = self._input(x), y.to(self.device, non_blocking=True)
            with self.autocast():
                logits = self.method.predict(x)
            loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
            if probs is not None:
                outputs.append(torch.softmax(logits.float(), dim=1))
            onehot = F.one_hot(y, n)
            count += onehot.sum(0)
            correct += (onehot * (logits.argmax(1) == y).long()[:, None]).sum(0)
        if self.dist.enabled:
            sums = self.dist.all_reduce_sum(torch.cat([correct.double(), count.double(), loss[None]]))
            correct, count, loss = sums[:n].round().long(), sums[n : 2 * n].round().long(), sums[2 * n]
        if probs is not None:
            probs.append(self.dist.gather_in_order(torch.cat(outputs)).cpu())
        correct, count = correct.cpu(), count.cpu()
        total = int(count.sum())
        return int(correct.sum()) / total, float(loss) / total, correct, count

    @torch.inference_mode()
    def probabilities(self, loader) -> torch.Tensor:
        """Softmax outputs over a loader of images only (no labels exist to read: validators' input)."""
        probs = []
        for x in tqdm(loader, desc="eval validators", disable=not self.progress, leave=False):
            with self.autocast():
                logits = self.method.predict(self._input(x))
            probs.append(torch.softmax(logits.float(), dim=1))
        return self.dist.gather_in_order(torch.cat(probs)).cpu()
