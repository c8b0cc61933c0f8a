"""Class prototypes of a user's source: what a few labelled photos of it add to the head's logits.

A class's prototype is the mean direction of the backbone features of the source's labelled photos of that class
(unit rows averaged, normalised again: ``trust.novelty.class_centroids``). An adapted model's logits are the
head's plus ``weight`` times the cosine between a photo's features and each prototype; a class without labelled
photos adds nothing. No weight is trained, so it takes a second on a CPU and one photo a class already counts.

The weight is in logit units: at 40 a prototype outweighs the head wherever the two disagree (cosines differ
by a few tenths), so an adapted model answers mostly among the classes it was shown photos of. It was chosen
on ../shared/data/other-sources (README.md, "Adapt to a source with a few labelled photos").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gem_lightning.errors import GemLightningError
from gem_lightning.trust.novelty import class_centroids


@dataclass(frozen=True)
class SourcePrototypes:
    """A source's prototypes, as an adapted checkpoint stores them (``as_dict``)."""

    prototypes: torch.Tensor  # (C, F) float32 unit rows; zero for a class without labelled photos
    photos: torch.Tensor  # (C,) int64: how many labelled photos each prototype averages
    weight: float
    source: str  # the folder the labelled photos came from

    @classmethod
    def fit(
        cls, features: torch.Tensor, targets: torch.Tensor, num_classes: int, weight: float, source: str
    ) -> SourcePrototypes:
        if weight <= 0:
            raise GemLightningError(f"weight={weight} must be positive: how much a prototype adds, e.g. 40")
        if len(targets) == 0:
            raise GemLightningError(f"no labelled photos of {source} to adapt to")
        photos = torch.bincount(targets.long(), minlength=num_classes)
        return cls(class_centroids(features, targets.long(), num_classes), photos, float(weight), str(source))

    @classmethod
    def from_dict(cls, stored: dict) -> SourcePrototypes:
        return cls(stored["prototypes"], stored["photos"], float(stored["weight"]), str(stored["source"]))

    def as_dict(self) -> dict:
        """Tensors and plain types, so the checkpoint loads with ``weights_only=True``."""
        return {
            "prototypes": self.prototypes.clone(),
            "photos": self.photos.clone(),
            "weight": self.weight,
            "source": self.source,
        }

    def added_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C): ``weight`` x cosine of each photo's features to each prototype (0 where a class has none)."""
        prototypes = self.prototypes.to(device=features.device, dtype=features.dtype)
        return self.weight * (F.normalize(features, dim=1) @ prototypes.T)

    def held_out_logits(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, C) what ``added_logits`` gives each of the labelled photos the prototypes were fitted on, with its
        own class's prototype refitted without it (none when it was that class's only photo): the prototypes'
        answers on photos they have not seen, which the adapted temperature and sets are fitted to."""
        units = F.normalize(features.double(), dim=1)
        sums = torch.zeros_like(self.prototypes, dtype=torch.float64).index_add_(0, targets, units)
        own_without = F.normalize(sums[targets] - units, dim=1)  # a zero vector stays zero
        cosines = units @ self.prototypes.double().T
        cosines[torch.arange(len(targets)), targets] = (units * own_without).sum(dim=1)
        return (self.weight * cosines).to(features.dtype)

    def describe(self, class_names: list[str]) -> str:
        """``3 photos each of 6 classes of shop/`` or ``1 to 5 photos each of 17 classes of ...``."""
        counts = self.photos[self.photos > 0]
        low, high = int(counts.min()), int(counts.max())
        each = f"{low}" if low == high else f"{low} to {high}"
        photos = "photos" if high > 1 else "photo"
        return f"{each} {photos} each of {len(counts)} of {len(class_names)} classes of {Path(self.source).name}"
