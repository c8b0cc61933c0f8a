"""Gem families: which classes are relatives (one mineral group), for family accuracy and family answers.

A taxonomy (``conf/taxonomy/``) maps each class to its species and family. Many confusions are within a family
(Rhodolite, Almandine, Garnet Red), so a report gives accuracy at both levels, and an answer unsure of the
class but sure of the family says so: "a garnet (75 %): Rhodolite 45 %, Almandine 30 %". A class the taxonomy
does not list is a family of its own, so family accuracy is never below class accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from gem_lightning.errors import GemLightningError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilyAnswer:
    family: str
    probability: float  # the family's classes together
    members: list[tuple[str, float]]  # its classes in the answer, most probable first


class Taxonomy:
    """The families of one model's classes (``class_names``, in the model's order)."""

    def __init__(self, name: str, family_answer_below: float, classes: dict[str, dict[str, str]]):
        for class_name, entry in classes.items():
            if "family" not in entry:
                raise GemLightningError(f"taxonomy {name}: {class_name} has no family; give it family: <name>")
        if not 0.0 < family_answer_below <= 1.0:
            raise GemLightningError(f"taxonomy.family_answer_below={family_answer_below} must be in (0, 1]")
        self.name = name
        self.family_answer_below = family_answer_below
        self.entries = classes

    def family_of(self, class_name: str) -> str:
        entry = self.entries.get(class_name)
        return entry["family"] if entry else class_name

    def families(self, class_names: list[str]) -> tuple[list[str], torch.Tensor]:
        """(family names in order of first appearance, (C,) family index of every class)."""
        unlisted = [name for name in class_names if name not in self.entries]
        if unlisted:
            log.info("taxonomy %s does not list %d classes, each its own family: %s", self.name, len(unlisted),
                     ", ".join(unlisted))  # fmt: skip
        names: list[str] = []
        for class_name in class_names:
            if self.family_of(class_name) not in names:
                names.append(self.family_of(class_name))
        index = torch.tensor([names.index(self.family_of(name)) for name in class_names])
        return names, index

    @staticmethod
    def family_probabilities(probabilities: torch.Tensor, family_index: torch.Tensor) -> torch.Tensor:
        """(N, F) probability of each family (its classes summed); ``family_index`` as ``families()`` gives it."""
        summed = torch.zeros(len(probabilities), int(family_index.max()) + 1, dtype=probabilities.dtype)
        return summed.index_add_(1, family_index, probabilities)

    def family_answer(self, probabilities: torch.Tensor, class_names: list[str]) -> FamilyAnswer | None:
        """For one photo's (C,) probabilities: the family answer when the best class is below
        ``family_answer_below`` but its family, with at least one more class, reaches it; else None."""
        best = int(probabilities.argmax())
        if float(probabilities[best]) >= self.family_answer_below:
            return None
        family = self.family_of(class_names[best])
        members = sorted(
            ((name, float(p)) for name, p in zip(class_names, probabilities, strict=True)
             if self.family_of(name) == family),
            key=lambda pair: -pair[1],
        )  # fmt: skip
        total = sum(p for _, p in members)
        if len(members) < 2 or total < self.family_answer_below:
            return None
        shown = [pair for pair in members if pair[1] >= 0.05] or members[:1]  # relatives worth naming
        return FamilyAnswer(family, total, shown)
