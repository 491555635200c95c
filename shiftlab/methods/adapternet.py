"""AdapterNet: learn an input transformation in front of a frozen, already-trained classifier.

Hazan, Shoshan, Ratner, Khapun and Aladjem, "AdapterNet - learning input transformation for domain
adaptation" (2018, arXiv:1805.11601), Sec. 3: a shallow CNN (:class:`~shiftlab.nn.adapters.AdapterNet`,
by default 5 layers of 1x1 convolutions with 3 channels, identity-initialised) is trained through the
fixed classifier with the classifier's cross-entropy on labelled images of the new camera. Only the
adapter learns; the classifier (``--model.weights``, e.g. a source-only run's ``checkpoints/best.pt``)
keeps its parameters and its BatchNorm statistics bit for bit, because it is frozen and held in eval mode.

``predict(x) = classifier(adapter(x))``: the adapter reads the loaders' [0, 1] images and the
classifier's normalisation comes after it. At the end of training the selected epoch's adapter
(``checkpoints/best.pt``) is written on its own to ``adapter.pt`` in the run folder, which
``shiftlab adapt-images --adapter RUN`` applies to images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..checkpoints import load_checkpoint, save_checkpoint
from ..errors import AdapterError, ConfigError
from ..nn.adapters import AdapterNet
from .base import Batch, Method, method_params, register_method

ADAPTER_FILE = "adapter.pt"
ADAPTER_FORMAT = "shiftlab.adapter/1"


@register_method
class AdapterNetMethod(Method):
    """AdapterNet (Hazan et al. 2018): a shallow CNN before the frozen classifier, trained on target labels."""

    name = "adapternet"
    uses_source = False
    target_stream = "labelled"
    requires_trained_model = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        depth: int = Field(5, ge=1, description="convolution layers of the adapter (the paper: 5)")
        hidden_channels: int = Field(3, ge=1, description="channels between the adapter's layers (the paper: 3)")
        kernel_size: int = Field(
            1,
            ge=1,
            description="odd kernel size; 1 (the paper) can only change colours "
            "pixel by pixel, larger kernels also see neighbours",
        )
        init: Literal["identity", "kaiming", "xavier"] = Field(
            "identity",
            description="adapter initialisation: 'identity' (the paper's; F(x) = x exactly before "
            "training) or random He ('kaiming') / Glorot ('xavier'), which the paper reports fail",
        )

        @field_validator("kernel_size")
        @classmethod
        def _odd(cls, value: int) -> int:
            if value % 2 == 0:
                raise ValueError(f"must be odd (1, 3, 5, ...) so the output keeps the image's size, got {value}")
            return value

    def __init__(self, backbone, params, **kwargs):
        super().__init__(backbone, params, **kwargs)
        try:
            self.adapter = AdapterNet(3, params.depth, params.hidden_channels, params.kernel_size, params.init)
        except ValueError as err:
            raise ConfigError(f"method adapternet: {err}") from None
        # frozen: no parameter of the classifier is optimised (param_groups leaves out what needs no grad)
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        # eval mode keeps BatchNorm's running statistics fixed and Dropout off: the classifier the adapter
        # is trained through is exactly the one that will be used
        self.backbone.eval()
        return self

    def training_step(self, source: Batch | None, target: Batch, progress: float):
        return self.classification_step(target, self.predict)  # through the adapter

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.adapter(x))

    def on_fit_end(self, run_dir: Path) -> None:
        export_adapter(run_dir)


def export_adapter(run_dir: str | Path, checkpoint: str = "checkpoints/best.pt") -> Path:
    """Write ``<run_dir>/adapter.pt``: the adapter of the run's selected epoch, alone, with its architecture.

    The file holds ``{"format", "arch", "state_dict", "epoch", "selection", "config"}`` and loads with
    ``torch.load(..., weights_only=True)``; :func:`shiftlab.nn.adapters.load_adapter` rebuilds it.
    """
    run_dir = Path(run_dir)
    path = run_dir / checkpoint
    if not path.is_file():
        raise AdapterError(f"{path} does not exist: {run_dir} is not a finished adapternet run folder")
    state = load_checkpoint(path)
    weights = {k.removeprefix("adapter."): v for k, v in state["model"].items() if k.startswith("adapter.")}
    config = state.get("config") or {}
    method = config.get("method") or {}
    if not weights or method.get("name") != "adapternet":
        raise AdapterError(
            f"{path} holds no adapter (method '{method.get('name')}'); give the run folder of a "
            f"--method.name=adapternet run"
        )
    # the run's method keys typed as the run was (a checkpoint of an older config.yaml may omit defaults)
    params = method_params("adapternet", {k: v for k, v in method.items() if k != "name"})
    arch = {"channels": 3, **params.model_dump(include={"depth", "hidden_channels", "kernel_size"})}
    out = run_dir / ADAPTER_FILE
    save_checkpoint(
        out,
        {
            "format": ADAPTER_FORMAT,
            "arch": arch,
            "state_dict": weights,
            "epoch": state.get("epoch"),
            "selection": state.get("selection"),
            "config": config,
        },
    )
    return out


def read_adapter_file(path: str | Path) -> dict:
    """The contents of an ``adapter.pt`` (read with ``weights_only=True``); errors name the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise AdapterError(f"cannot read adapter file {path}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != ADAPTER_FORMAT:
        raise AdapterError(f"{path} is not an adapter file written by shiftlab (format {ADAPTER_FORMAT})")
    return state
