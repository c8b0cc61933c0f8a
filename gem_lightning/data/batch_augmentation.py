"""A training policy (a torchvision v2 ``Compose``) applied to a whole uint8 batch on its device
(``data.augment_on=device``).

``BatchAugmentation(policy)(batch)`` gives what the policy gives each image of the batch, in distribution: every
image still draws its own parameters, by torchvision's own rules (each step's ``make_params``), but the pixel work
is done for the batch at once. The policy's leading geometric steps (``RandomRotation``, ``RandomResizedCrop``,
``RandomHorizontalFlip``, ``RandomVerticalFlip``) become one affine resampling of the batch (``grid_sample``: one
interpolation, at the output size), and a following ``ColorJitter`` of brightness and contrast becomes one
per-image scale and offset on the batch (clipped once, at the end, where torchvision clips after each). Any
other step (``RandomChoice``, hue, JPEG, ...) and everything after it runs image by image.
"""

# Why not the steps one after another on the batch: kornia.augmentation does exactly that (rotate the 288 px
# square, crop it, resize the crop, each a pass over the batch) and measured no faster on a CPU than torchvision's
# per-image loop; folding the geometry into one matrix per image makes it one pass.

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


def _foldable(step) -> bool:
    """Whether ``step`` is a geometric step the batched resampling does as torchvision defines it: rotations
    about the centre into the same square with a black fill, square crops."""
    if isinstance(step, v2.RandomRotation):
        return not step.expand and step.center is None and step.fill in (None, 0)
    if isinstance(step, v2.RandomResizedCrop):
        return step.size[0] == step.size[1]
    return isinstance(step, (v2.RandomHorizontalFlip, v2.RandomVerticalFlip))


def _plain_jitter(step) -> bool:
    return isinstance(step, v2.ColorJitter) and step.saturation is None and step.hue is None


class BatchAugmentation:
    """``policy`` for uint8 batches (N, 3, S, S) on any device; returns uint8 (N, 3, s, s)."""

    def __init__(self, policy: v2.Compose | None) -> None:
        steps = list(policy.transforms) if isinstance(policy, v2.Compose) else [policy] if policy else []
        folded = 0
        while folded < len(steps) and _foldable(steps[folded]):
            folded += 1
        self.geometry = steps[:folded]
        self.jitter = steps[folded] if folded < len(steps) and _plain_jitter(steps[folded]) else None
        rest = steps[folded + (self.jitter is not None) :]
        self.per_image = v2.Compose(rest) if rest else None

    def describe(self) -> str:
        batched = [type(step).__name__ for step in [*self.geometry, *([self.jitter] if self.jitter else [])]]
        per_image = [type(step).__name__ for step in self.per_image.transforms] if self.per_image else []
        return f"batched: {', '.join(batched) or 'nothing'}; image by image: {', '.join(per_image) or 'nothing'}"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        images = batch.float()
        if self.geometry:
            images = self._resample(images)
        if self.jitter is not None:
            images = self._jitter(images)
        # Round half up and clip, in place: +0.5, then truncation by the cast.
        images = images.add_(0.5).clamp_(0, 255).to(torch.uint8)
        if self.per_image is not None:
            images = torch.stack([self.per_image(image) for image in images])
        return images

    # -- geometry: one matrix per image --------------------------------------------------------------------

    def _resample(self, images: torch.Tensor) -> torch.Tensor:
        n, _, side, _ = images.shape
        maps = torch.stack([self._draw_geometry(side) for _ in range(n)])  # image by image, as the policy draws
        out_side = next((step.size[0] for step in self.geometry if isinstance(step, v2.RandomResizedCrop)), side)
        theta = _normalised(maps, side, out_side).to(images.device, images.dtype)
        grid = F.affine_grid(theta, [n, 3, out_side, out_side], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _draw_geometry(self, side: int) -> torch.Tensor:
        """One image's draw of the geometric steps, as the 3x3 map from a position (x, y, 1) in the output to
        where it comes from in the input, in pixel units (a pixel's centre at i + 0.5)."""
        to_input = torch.eye(3, dtype=torch.float64)  # from the current step's output to the input
        current = side
        for step in self.geometry:
            if isinstance(step, v2.RandomRotation):
                angle = math.radians(step.make_params([_size_only(current)])["angle"])
                # Counter-clockwise as shown (y down): a pixel at offset d from the centre samples R(angle) d.
                cos, sin = math.cos(angle), math.sin(angle)
                rotate = _matrix([[cos, -sin, 0.0], [sin, cos, 0.0]])
                centre = current / 2
                to_input = to_input @ _matrix([[1, 0, centre], [0, 1, centre]]) @ rotate
                to_input = to_input @ _matrix([[1, 0, -centre], [0, 1, -centre]])
            elif isinstance(step, v2.RandomResizedCrop):
                crop = step.make_params([_size_only(current)])
                size = step.size[0]
                scale_x, scale_y = crop["width"] / size, crop["height"] / size
                to_input = to_input @ _matrix([[scale_x, 0, crop["left"]], [0, scale_y, crop["top"]]])
                current = size
            elif torch.rand(1) < step.p:  # a flip, drawn as torchvision draws it
                flip = [[-1, 0, current], [0, 1, 0]] if isinstance(step, v2.RandomHorizontalFlip) else None
                to_input = to_input @ _matrix(flip or [[1, 0, 0], [0, -1, current]])
        return to_input

    # -- colour: per-image factors -------------------------------------------------------------------------

    def _jitter(self, images: torch.Tensor) -> torch.Tensor:
        """Brightness b and contrast c, in the image's drawn order: both are linear (brightness blends with
        black, contrast with the image's mean grey m), so either order gives b c x + b (1 - c) m, one pass."""
        n = images.shape[0]
        drawn = [self.jitter.make_params([images[0]]) for _ in range(n)]
        brightness, contrast = (
            torch.tensor([d[key] if d[key] is not None else 1.0 for d in drawn], device=images.device)
            for key in ("brightness_factor", "contrast_factor")
        )
        mean_grey = images.mean(dim=(2, 3)) @ _GREY.to(images.device)  # (N,): each image's mean luma
        scale = (brightness * contrast).view(n, 1, 1, 1)
        offset = (brightness * (1 - contrast) * mean_grey).view(n, 1, 1, 1)
        return images.mul_(scale).add_(offset)


# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
_GREY = torch.tensor([0.2989, 0.587, 0.114])


def _matrix(rows: list[list[float]]) -> torch.Tensor:
    """The 3x3 homogeneous matrix of a 2x3 affine map."""
    return torch.tensor([*rows, [0, 0, 1]], dtype=torch.float64)


def _size_only(side: int) -> torch.Tensor:
    """A (3, side, side) image without memory: what a step's make_params needs (it reads the size only)."""
    return torch.empty(1, dtype=torch.uint8).expand(3, side, side)


def _normalised(matrices: torch.Tensor, side: int, out_side: int) -> torch.Tensor:
    """(N, 3, 3) pixel-coordinate maps as affine_grid's (N, 2, 3) thetas (coordinates in [-1, 1], corners
    at the pixels' outer edges: align_corners=False)."""
    to_unit = torch.tensor([[2 / side, 0, -1], [0, 2 / side, -1], [0, 0, 1]], dtype=torch.float64)
    from_unit = torch.tensor([[out_side / 2, 0, out_side / 2], [0, out_side / 2, out_side / 2], [0, 0, 1]])
    return (to_unit @ matrices @ from_unit.double())[:, :2].float()
