"""Input adapters: a shallow network that transforms images before a frozen classifier.

AdapterNet follows Hazan, Shoshan, Ratner, Khapun and Aladjem, "AdapterNet - learning input
transformation for domain adaptation" (IBM Research Haifa, 2018, arXiv:1805.11601), Sec. 3: a few
convolutions (by default 5 layers of 1x1 convolutions with 3 channels and ReLU between them) are put
in front of a trained classifier whose weights stay fixed, and are trained through it with the
classifier's own loss on labelled images of the new camera. They are initialised to the identity
(intra-channel weights 1, inter-channel weights 0, biases 0), so that training starts from the
classifier's own behaviour; the paper reports that a random initialisation fails.

The adapter reads and writes images in [0, 1] (shiftlab's data loaders yield those): the classifier's
normalisation (``Backbone.normalize``) stays after the adapter.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Init = Literal["identity", "kaiming", "xavier"]
INITS = ("identity", "kaiming", "xavier")


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 :class:`~torch.nn.Conv2d` computed as a per-pixel matrix product over channels: the same
    parameters and state-dict keys, the same function, but on CPU oneDNN's convolution of a few channels
    is 10-20x slower than this product (3 -> 3 channels, 512 digits images: 116 ms against 6 ms)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("oc,nchw->nohw", self.weight[:, :, 0, 0], x)
        return y + self.bias.view(1, -1, 1, 1)


class AdapterNet(nn.Module):
    """``depth`` convolutions of ``kernel_size`` (odd) with ``hidden_channels`` channels between them and
    ReLU between layers (none after the last), mapping ``channels`` to ``channels`` at the same resolution.

    ``init="identity"`` makes the adapter exactly F(x) = x for inputs in [0, 1] (in fact for any
    nonnegative input), bit for bit, whatever the depth: the first ``channels`` hidden channels carry
    the input through (a 1 on the diagonal at the kernel's centre tap, 0 elsewhere), the other hidden
    channels are 0, and ReLU of a nonnegative value is that value. ``"kaiming"`` (He et al., ICCV 2015)
    and ``"xavier"`` (Glorot & Bengio, AISTATS 2010) are the random initialisations the paper compares
    against (Sec. 4), with zero biases.

    Borders are padded by replicating the edge pixels, so a wider kernel does not darken the image's
    frame (zero padding would feed the adapter black pixels that no camera produced).
    """

    def __init__(
        self, channels: int = 3, depth: int = 5, hidden_channels: int = 3, kernel_size: int = 1, init: Init = "identity"
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"AdapterNet depth must be at least 1, got {depth}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"AdapterNet kernel_size must be odd and positive (1, 3, 5, ...), got {kernel_size}")
        if init not in INITS:
            raise ValueError(f"AdapterNet init must be one of {', '.join(INITS)}, got {init!r}")
        if init == "identity" and depth > 1 and hidden_channels < channels:
            raise ValueError(
                f"identity initialisation needs hidden_channels >= channels ({channels}) to carry the "
                f"image through, got hidden_channels={hidden_channels}; raise it or use a random init"
            )
        self.channels, self.depth, self.hidden_channels, self.kernel_size = (
            channels,
            depth,
            hidden_channels,
            kernel_size,
        )
        widths = [channels] + [hidden_channels] * (depth - 1) + [channels]
        layers: list[nn.Module] = []
        for i in range(depth):
            if kernel_size == 1:
                layers.append(PointwiseConv2d(widths[i], widths[i + 1]))
            else:
                layers.append(
                    nn.Conv2d(widths[i], widths[i + 1], kernel_size, padding=kernel_size // 2, padding_mode="replicate")
                )
            if i < depth - 1:
                layers.append(nn.ReLU())  # not in place: the input tensor must stay untouched
        self.layers = nn.Sequential(*layers)
        self.reset_parameters(init)

    @property
    def arch(self) -> dict[str, int]:
        """What rebuilds this adapter (saved beside its weights in ``adapter.pt``)."""
        return {
            "channels": self.channels,
            "depth": self.depth,
            "hidden_channels": self.hidden_channels,
            "kernel_size": self.kernel_size,
        }

    @torch.no_grad()
    def reset_parameters(self, init: Init = "identity") -> None:
        centre = self.kernel_size // 2
        for conv in self.layers:
            if not isinstance(conv, nn.Conv2d):
                continue
            if init == "identity":
                conv.weight.zero_()
                for c in range(min(conv.in_channels, conv.out_channels)):
                    conv.weight[c, c, centre, centre] = 1.0
            elif init == "kaiming":
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(conv.weight)
            conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"AdapterNet expects {self.channels}-channel images, got shape {tuple(x.shape)}")
        return self.layers(x)


def load_adapter(state: dict) -> AdapterNet:
    """An :class:`AdapterNet` from what ``adapter.pt`` holds: ``{"arch": {...}, "state_dict": {...}}``."""
    adapter = AdapterNet(**state["arch"])
    adapter.load_state_dict(state["state_dict"])
    return adapter.eval()
