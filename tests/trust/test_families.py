"""Gem families: the taxonomy file covers every class with a cited source, and answers name a family when the
class is unsure."""

from __future__ import annotations

import hydra
import pytest
import torch

from gem_lightning.config.composition import compose_config
from gem_lightning.data.demo import DEMO_CLASSES
from gem_lightning.errors import GemLightningError
from gem_lightning.trust.answers import Answering
from gem_lightning.trust.families import Taxonomy
from tests.helpers.workplace import GEMSTONES_DIR, REPO_ROOT, needs_shared


def _taxonomy() -> Taxonomy:
    # As every command composes it: conf/predict.yaml's default taxonomy.
    return hydra.utils.instantiate(compose_config("predict", ["ckpt=x", "input=y"]).taxonomy)


def test_the_taxonomy_cites_its_source_and_covers_the_demo_classes():
    text = (REPO_ROOT / "conf" / "taxonomy" / "gemstones.yaml").read_text()
    assert "https://www.mindat.org" in text and "https://www.gia.edu/gem-encyclopedia" in text
    taxonomy = _taxonomy()
    assert {spec.name for spec in DEMO_CLASSES} <= set(taxonomy.entries)
    assert all({"species", "family"} <= set(entry) for entry in taxonomy.entries.values())


@needs_shared(GEMSTONES_DIR / "train")
def test_the_taxonomy_lists_every_kaggle_class_and_groups_the_known_relatives():
    classes = sorted(path.name for path in (GEMSTONES_DIR / "train").iterdir() if path.is_dir())
    taxonomy = _taxonomy()
    assert sorted(taxonomy.entries) == classes
    family = taxonomy.family_of
    assert family("Rhodolite") == family("Almandine") == family("Garnet Red") == family("Tsavorite") == "garnet"
    assert family("Emerald") == family("Aquamarine") == family("Beryl Golden") == family("Bixbite") == "beryl"
    assert family("Ruby") == family("Sapphire Blue") == "corundum" and family("Quartz Lemon") == "quartz"
    assert family("Beryl Golden") != family("Quartz Lemon") and family("Tanzanite") != family("Sapphire Blue")


def test_an_unsure_class_answer_becomes_a_family_answer():
    names = ["Rhodolite", "Almandine", "Pyrope", "Ruby", "Obsidian"]
    answering = Answering(names, _taxonomy(), None, 0.9, novelty=None, accept=0.95)
    unsure, sure, spread = answering.answers(
        torch.tensor([[0.45, 0.30, 0.03, 0.22, 0.0], [0.9, 0.05, 0.0, 0.05, 0.0], [0.3, 0.0, 0.0, 0.4, 0.3]]), 3
    )
    assert unsure.family.family == "garnet" and unsure.family.probability == pytest.approx(0.78)
    assert [name for name, _ in unsure.family.members] == ["Rhodolite", "Almandine"]  # Pyrope under 5 %
    assert unsure.sentence().startswith("a garnet (78%): Rhodolite 45%, Almandine 30%")
    assert sure.family is None and sure.sentence() == "Rhodolite (90%)"
    assert spread.family is None  # Ruby's family holds only 40 %
    # A class the taxonomy does not list is a family of its own.
    families, index = answering.taxonomy.families(names)
    assert families == ["garnet", "corundum", "Obsidian"] and index.tolist() == [0, 0, 0, 1, 2]


def test_a_taxonomy_entry_without_family_is_one_line():
    with pytest.raises(GemLightningError, match="taxonomy mine: Ruby has no family"):
        Taxonomy("mine", 0.5, {"Ruby": {"species": "corundum"}})
