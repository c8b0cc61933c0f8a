"""White balance as the model's first step (``model.white_balance``): each photo's three channels scaled so that a
reference region of it averages grey, in training, evaluation, prediction, heat maps and exported files alike.

``none`` leaves photos as they are. ``border``: the reference is the square's outer band (1/14 of its side, 16 px at
224), mostly background, whose colour is the light's and the camera's, not the stone's. ``grey_world``: the whole
square (which greys a stone that fills the frame). README.md, "Photos from other sources", has what each measured.
"""

# Inside the model rather than the data pipeline: every path into the network (loaders, the predictor, Grad-CAM,
# backbone features, ONNX/TorchScript) already passes through GemClassifier.features, so no path can forget it,
# the cached image arrays stay the photos as they are, and a checkpoint carries the rule in its hyperparameters.

from __future__ import annotations

from enum import Enum

import torch


class WhiteBalance(str, Enum):
    """The choices of ``model.white_balance`` (the config schema checks the key against them)."""

    none = "none"
    grey_world = "grey_world"
    border = "border"


# The band's width as a share of the side: 16 px at 224, the band the colour-constancy screen measured.
BORDER_SHARE = 1 / 14
# A channel whose reference averages below this (8 of 255) carries no evidence of the light's colour: a black
# background's JPEG noise would otherwise multiply a channel of the whole photo several times over.
DARKEST_REFERENCE = 8 / 255


def reference_colour(images: torch.Tensor, rule: str) -> torch.Tensor:
    """(N, 3) mean colour of each image's reference region under ``rule`` (``grey_world`` or ``border``);
    ``images`` are (N, 3, H, W) floats in [0, 1]."""
    whole = images.sum(dim=(2, 3))
    height, width = images.shape[-2:]
    if rule == WhiteBalance.grey_world:
        return whole / (height * width)
    band = max(1, round(min(height, width) * BORDER_SHARE))
    # The whole square less its inside: sums and slices only, so ONNX and TorchScript trace it as it is.
    inside = images[..., band : height - band, band : width - band]
    band_pixels = height * width - inside.shape[-2] * inside.shape[-1]
    return (whole - inside.sum(dim=(2, 3))) / band_pixels


def white_balanced(images: torch.Tensor, rule: str) -> torch.Tensor:
    """(N, 3, H, W) floats in [0, 1], each image's channels scaled so that its reference region (``rule``)
    averages grey at the region's own brightness, then clipped to [0, 1]; ``none`` returns ``images`` itself."""
    if rule == WhiteBalance.none:
        return images
    reference = reference_colour(images, rule).clamp_min(DARKEST_REFERENCE)
    gains = reference.mean(dim=1, keepdim=True) / reference
    # In place on the new product: a second (N, 3, H, W) tensor would cost more than the balance itself on a CPU.
    return (images * gains[:, :, None, None]).clamp_(0, 1)
