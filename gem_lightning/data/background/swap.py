"""Training photos whose background is swapped for a random one, so the model learns the stone, not the studio."""

# Kaggle's photos are studio shots, mostly on black or white; users photograph stones on tables, hands and
# cloth. ``BackgroundSwap`` (``conf/background_swap/``) takes each training square and, with probability
# ``probability``, keeps the stone where a rembg mask of that square says it is and paints everything else with
# a random background of one of ``BACKGROUND_KINDS``; otherwise the photo stays as it is, so the originals are
# still seen. Evaluation and prediction never swap: the model reads users' photos as they are, with no mask
# model needed at inference.
#
# The masks are computed once per training square by ``image_arrays.build_mask_array`` (cached beside the
# image arrays); the swap runs in the loader, before the augmentation policy crops, turns and flips the square.

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gem_lightning.data.background.backends import RembgBackend
from gem_lightning.errors import GemLightningError


def plain_background(side: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random colour (float (3, side, side), 0-255): a sheet of paper, a painted table."""
    colour = torch.rand(3, 1, 1, generator=generator) * 255
    return colour.expand(3, side, side)


def gradient_background(side: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A linear blend of two random colours in a random direction: lit paper, a photo box."""
    start, end = torch.rand(2, 3, 1, 1, generator=generator) * 255
    angle = float(torch.rand((), generator=generator)) * 2 * math.pi
    axis = torch.linspace(-1, 1, side)
    along = math.cos(angle) * axis[None, :] + math.sin(angle) * axis[:, None]  # (side, side)
    weight = ((along - along.min()) / (along.max() - along.min()).clamp_min(1e-6))[None]
    return start * (1 - weight) + end * weight


def noise_background(side: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random colours on a coarse grid (2-8 cells a side), smoothly enlarged, plus fine grain: cloth, wood,
    a cluttered desk out of focus."""
    cells = int(torch.randint(2, 9, (), generator=generator))
    coarse = torch.rand(1, 3, cells, cells, generator=generator) * 255
    smooth = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)[0]
    grain = torch.randn(3, side, side, generator=generator) * float(torch.rand((), generator=generator)) * 20
    return smooth + grain


# The one list of background kinds: conf/background_swap/*.yaml name them in ``kinds``.
BACKGROUND_KINDS = {"plain": plain_background, "gradient": gradient_background, "noise": noise_background}


class BackgroundSwap:
    """``swap(image, mask)``: the uint8 (3, S, S) square with its background replaced, or unchanged.

    ``probability`` 0 turns the swap off (``enabled`` is False: no masks are computed). ``mask_model`` names the
    rembg model that finds the stone (never downloaded); ``kinds``: which of ``BACKGROUND_KINDS`` to draw from.
    """

    # Draws use torch's global generator, which Lightning seeds in every loader process, as torchvision's
    # transforms do; the kinds are equally likely.

    def __init__(
        self, probability: float = 0.0, mask_model: str = "u2netp", kinds: tuple[str, ...] = tuple(BACKGROUND_KINDS)
    ):
        if not 0.0 <= probability <= 1.0:
            raise GemLightningError(f"background_swap.probability={probability}: use a value from 0 to 1")
        kinds = tuple(kinds)
        unknown = [kind for kind in kinds if kind not in BACKGROUND_KINDS]
        if unknown or not kinds:
            raise GemLightningError(
                f"background_swap.kinds={list(kinds)}: use one or more of {', '.join(BACKGROUND_KINDS)}"
            )
        self.probability = probability
        self.kinds = kinds
        # Loads nothing yet.
        self.mask_backend = RembgBackend(mask_model, setting="background_swap.mask_model", alternative=None)

    @property
    def enabled(self) -> bool:
        return self.probability > 0

    def describe(self) -> str:
        kinds = "/".join(self.kinds)
        return (
            f"{self.probability:.0%} of training photos on {kinds} backgrounds (rembg {self.mask_backend.model} masks)"
        )

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.probability:
            return image
        kind = self.kinds[int(torch.randint(len(self.kinds), ()))]
        background = BACKGROUND_KINDS[kind](image.shape[-1])
        alpha = mask.to(torch.float32)[None] / 255  # a soft mask keeps the stone's anti-aliased edge
        swapped = image.to(torch.float32) * alpha + background * (1 - alpha)
        return swapped.round_().clamp_(0, 255).to(torch.uint8)
