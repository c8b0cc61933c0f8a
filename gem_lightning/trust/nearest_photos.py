"""What a photo resembles: the training photos nearest to it, among the classes it most likely is, so a user
can compare the stone with real examples of each.

When the sets are fitted, the training photos' backbone features (unit rows in float16: Kaggle's 2,413 photos
of EfficientNet-Lite0's 1,280 features are 6 MB) and their files (relative to the data folder) are stored in
the checkpoint beside the novelty centroids, from the same cached pass. Nearness is cosine distance, as for
the centroids; for each of a photo's ``CLASSES_SHOWN`` most probable classes, its ``PHOTOS_PER_CLASS``
nearest training photos of that class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

CLASSES_SHOWN = 3
PHOTOS_PER_CLASS = 2
# Features at least this close (cosine) to a training photo's are of that photo, or of a copy the network
# cannot tell from it. Measured (best_cpu retrained with 419 photos of kaggle-style-extras): each of those
# photos scores 0.9999 or more against its stored row, each of the 688 other photos of that source 0.955 at most.
SEEN_COSINE = 0.99


@dataclass(frozen=True)
class NearPhoto:
    class_index: int
    file: Path  # the training photo (the original, not its cut-out)
    distance: float  # cosine distance of the two photos' features


@dataclass(frozen=True)
class TrainingPhotos:
    """The training photos a model can show: their features, classes and files."""

    features: torch.Tensor  # (N, F) float16 unit rows
    labels: torch.Tensor  # (N,) int64 class indices
    files: list[str]  # each photo's path relative to ``root``; absolute for a photo of an extra source
    root: str  # the data folder the run trained on

    @classmethod
    def of(cls, features: torch.Tensor, labels: torch.Tensor, photos: list[Path], root: str | Path) -> TrainingPhotos:
        """``photos``: where each training photo is; kept relative to ``root`` where they lie under it."""
        files = [str(photo.relative_to(root)) if photo.is_relative_to(root) else str(photo) for photo in photos]
        return cls(F.normalize(features.float(), dim=1).half(), labels.long(), files, str(root))

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """(N, T): the cosine of each of (N, F) photos' features to each training photo's."""
        return F.normalize(features.float(), dim=1) @ self.features.float().T

    def seen(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) bool: which of (N, F) photos the network trained on (``SEEN_COSINE`` from a training photo)."""
        return self.similarity(features).max(dim=1).values >= SEEN_COSINE

    def nearest(self, features: torch.Tensor, classes: torch.Tensor, per_class: int = PHOTOS_PER_CLASS):
        """For each of (M, F) photos and each class in its row of (M, K) ``classes``: the ``per_class``
        nearest training photos of that class, nearest first; (M lists of K lists of NearPhoto)."""
        similarity = self.similarity(features)
        result = []
        for row, photo_classes in zip(similarity, classes.tolist(), strict=True):
            per_photo = []
            for index in photo_classes:
                members = (self.labels == index).nonzero().flatten()
                values, order = row[members].topk(min(per_class, len(members)))
                per_photo.append(
                    [
                        # An absolute file (an extra source's photo) stays itself under the / operator.
                        NearPhoto(index, Path(self.root) / self.files[int(members[i])], float(1.0 - v))
                        for v, i in zip(values, order, strict=True)
                    ]
                )
            result.append(per_photo)
        return result

    def as_dict(self) -> dict:
        """What a checkpoint stores (tensors and plain types, so it loads with ``weights_only=True``)."""
        return {
            "features": self.features.clone(),
            "labels": self.labels.clone(),
            "files": self.files,
            "root": self.root,
        }
