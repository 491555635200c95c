"""Strong augmentation of image batches already on the device, as torch ops, from a checkpointed generator.

FixMatch (Sohn et al., NeurIPS 2020, Sec. 2.3) trains on a strongly augmented view (RandAugment / CTAugment,
then Cutout); here a fixed composition of the same kinds of operation, per sample: a random affine map
(rotation, translation, scale, shear; one ``grid_sample`` for the batch), brightness and contrast jitter, and
Cutout (a square set to grey). The random draws come from a CPU ``torch.Generator`` (the same on every device,
as :class:`shiftlab.data.decoded.BatchAugment`'s) whose state is a buffer of the module: it is saved in
checkpoints, so a resumed run draws what the uninterrupted one would, and it never touches the global stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class StrongAugment(nn.Module):
    """``forward(x)``: a strongly augmented copy of a float batch (N, C, H, W) in [0, 1]."""

    def __init__(
        self,
        seed: int = 0,
        rotation: float = 30.0,
        translate: float = 0.125,
        scale: float = 0.2,
        shear: float = 0.3,
        brightness: float = 0.5,
        contrast: float = 0.5,
        cutout: float = 0.5,
    ):
        super().__init__()
        self.rotation, self.translate, self.scale, self.shear = rotation, translate, scale, shear
        self.brightness, self.contrast, self.cutout = brightness, contrast, cutout
        self.register_buffer("rng_state", torch.Generator().manual_seed(seed).get_state())

    def _draw(self, n: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator()
        gen.set_state(self.rng_state.cpu())

        def u(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(n, generator=gen) * (hi - lo) + lo

        draws = {
            "angle": u(-self.rotation, self.rotation) * math.pi / 180,
            "tx": u(-self.translate, self.translate) * 2,
            "ty": u(-self.translate, self.translate) * 2,
            "scale": u(1 - self.scale, 1 + self.scale),
            "shear": u(-self.shear, self.shear),
            "brightness": u(1 - self.brightness, 1 + self.brightness),
            "contrast": u(1 - self.contrast, 1 + self.contrast),
            "cx": u(0, 1),
            "cy": u(0, 1),
        }
        self.rng_state.copy_(gen.get_state())
        return draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        d = {k: v.to(x.device, x.dtype) for k, v in self._draw(n).items()}
        cos, sin = torch.cos(d["angle"]), torch.sin(d["angle"])
        theta = torch.stack(
            [
                torch.stack([cos / d["scale"], (-sin + d["shear"] * cos) / d["scale"], d["tx"]], 1),
                torch.stack([sin / d["scale"], (cos + d["shear"] * sin) / d["scale"], d["ty"]], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out * d["brightness"][:, None, None, None]
        mean = out.mean((1, 2, 3), keepdim=True)
        out = ((out - mean) * d["contrast"][:, None, None, None] + mean).clamp(0, 1)
        if self.cutout > 0:  # a square of side cutout * size centred at (cx, cy), set to grey
            ys = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None] / h
            xs = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :] / w
            half = self.cutout / 2
            box = ((ys - d["cy"][:, None, None]).abs() < half) & ((xs - d["cx"][:, None, None]).abs() < half)
            out = torch.where(box[:, None], torch.full_like(out, 0.5), out)
        return out
