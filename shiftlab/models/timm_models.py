"""timm classifiers as backbones (``--model.name=timm:<name>``, e.g. ``timm:resnet18d``), an optional extra.

timm (Wightman, "PyTorch Image Models") builds the model without its classifier (``num_classes=0``), so its
pooled features feed shiftlab's own head; layer names inside ``features`` are timm's. Weights come from a
local file only (``--model.weights``: a timm state dict, or a shiftlab checkpoint): timm's hub downloads are
not used, so a run never depends on the network, and nothing falls back to random weights silently.
"""

from __future__ import annotations

from functools import cache

from torch import nn

from ..errors import ModelError, WeightsError
from ..extras import require
from ..utils import did_you_mean

PREFIX = "timm:"


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


@cache
def _timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def check_timm_name(name: str) -> str:
    """``name`` (``timm:<arch>``) if timm is installed and knows the architecture, else a one-line error."""
    require("timm", f"model.name={name} needs timm", "timm")
    arch = name[len(PREFIX) :]
    if arch not in _timm_names():
        raise ModelError(
            f"unknown timm model '{arch}' (model.name={name}).{did_you_mean(arch, _timm_names())} "
            f"List them with: python -c \"import timm; print(timm.list_models('*{arch[:4]}*'))\""
        )
    return name


def build_timm_features(name: str, state: dict | None, what: str) -> tuple[nn.Module, int]:
    """The timm model without its classifier and its feature size; ``state`` (a timm state dict) is loaded
    strictly, except the classifier's own keys (its class count is the dataset's, not the file's)."""
    import timm

    check_timm_name(name)
    model = timm.create_model(name[len(PREFIX) :], pretrained=False, num_classes=0)
    if state is not None:
        classifier = model.pretrained_cfg.get("classifier") or ""
        kept = {k: v for k, v in state.items() if not (classifier and k.startswith(f"{classifier}."))}
        try:
            missing, unexpected = model.load_state_dict(kept, strict=False)
        except RuntimeError as err:  # shapes that differ: another architecture's file
            raise WeightsError(
                f"{what}: the file does not fit timm's {name[len(PREFIX) :]} ({str(err).splitlines()[1].strip()[:160]})"
            ) from None
        if missing or unexpected:
            raise WeightsError(
                f"{what}: the file does not fit timm's {name[len(PREFIX) :]} "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
    return model, model.num_features


def refuse_hub_weights(name: str) -> None:
    raise WeightsError(
        f"model.name={name}: shiftlab does not download timm's weights; save them once where the "
        f"network is reachable (torch.save(timm.create_model(..., pretrained=True).state_dict(), "
        f"'w.pt')) and pass --model.weights=w.pt"
    )
