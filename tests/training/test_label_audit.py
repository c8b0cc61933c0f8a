"""The data report's label audit: a photo filed under the wrong class is found; the folder is left as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from gem_lightning.data.demo import DemoGemSet
from gem_lightning.data.label_issues import audit_labels
from gem_lightning.training.label_audit import run_label_audit
from gem_lightning.training.run import train
from tests.helpers.configs import TINY_DEMO, compose_config


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_a_ruby_filed_under_emerald_is_the_first_photo_flagged_and_nothing_is_moved(tmp_path):
    gems = DemoGemSet(images_per_class=12, image_size=48).render(tmp_path / "gems")
    (gems / ".demo-complete.json").unlink()  # a user's folder, not a rendered set
    shutil.move(gems / "Ruby" / "ruby_003.png", gems / "Emerald" / "ruby_003.png")
    before = _fingerprint(gems)
    # The tiny demo run's settings, on a folder of the user's rather than the rendered demo set.
    tiny = [override for override in TINY_DEMO if not override.startswith("data.demo.")]
    overrides = [*tiny, "data=gemstones", f"data.root={gems}"]
    result = train(compose_config(overrides, tmp_path))
    run_dir = tmp_path / "run"
    audit = json.loads((run_dir / "data_report.json").read_text())["label_issues"]
    # Even an untrained ResNet-18's features at 32 px tell a red oval from green octagons.
    assert audit["issues"][0]["path"] == "Emerald/ruby_003.png", audit["issues"][:3]
    assert audit["issues"][0]["suggested"] == "Ruby" and audit["issues"][0]["given"] == "Emerald"
    assert audit["photos"] == 120 and audit["folds"] == 5 and audit["backbone"] == "resnet18 (untrained)"
    # The classes that differ only in colour (the demo's designed pairs) are the ones found mixed.
    mixed = [set(pair["classes"]) for pair in audit["overlapping_classes"][:4]]
    assert {"Beryl Golden", "Quartz Lemon"} in mixed, audit["overlapping_classes"]
    assert (run_dir / audit["sheet"]).is_file()
    assert _fingerprint(gems) == before  # flagged, never moved, renamed or rewritten

    # Kept beside the data report: the same photos through the same weights and settings are read back, not
    # refitted (here the trained weights: a second audit, then the same one again).
    settings = compose_config(overrides, tmp_path).label_audit
    first, _ = run_label_audit(result.model, result.datamodule, settings)
    stored = {path: path.stat().st_mtime_ns for path in (tmp_path / "cache").rglob("label_issues-*.json")}
    again, _ = run_label_audit(result.model, result.datamodule, settings)
    assert again == first and len(stored) == 2
    assert {path: path.stat().st_mtime_ns for path in stored} == stored


def test_the_audit_needs_two_photos_a_class_to_cross_validate():
    features = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    photos = [(f"{i}.png", "train") for i in range(5)]
    assert "skipped" in audit_labels(features, labels, ["a", "b", "c"], photos)
    section = audit_labels(features[:4], labels[:4], ["a", "b"], photos[:4])
    assert section["folds"] == 2 and len(section["issues"]) <= 4


def test_the_audit_forks_no_process_pool(monkeypatch):
    # A pool forked by cleanlab inside a sweep worker (whose heartbeat thread may hold a lock at the fork) hung
    # the two-worker PostgreSQL sweep test once; the audit runs in its own process only.
    import multiprocessing

    def no_pool(*args, **kwargs):
        raise AssertionError("the label audit started a process pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    # cleanlab's default is a pool of one process per physical core: claim four, so that the default would start
    # one whatever machine runs this (on a one-core machine it would not, and the test could not fail).
    monkeypatch.setattr(multiprocessing, "cpu_count", lambda: 4)
    try:  # where psutil is installed, cleanlab asks it instead
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    features = (rng.normal(size=(40, 16)) + 3 * np.eye(16)[labels]).astype(np.float32)
    photos = [(f"{i}.png", "train") for i in range(40)]
    for rule in ("prune_by_noise_rate", "both"):
        assert "issues" in audit_labels(features, labels, ["a", "b", "c", "d"], photos, filter_by=rule)
