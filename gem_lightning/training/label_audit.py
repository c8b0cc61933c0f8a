"""The run's label audit: its backbone's features of every prepared photo, before training, through
``data.label_issues``; the section is added to the run's copy of ``data_report.json`` beside a thumbnail sheet.

The features are those head-only training reads (``inference.backbone_features``, cached); the audit itself is
cached beside the data report, keyed by the features and the settings, so the runs of a sweep over one backbone
share one audit. Its settings are ``conf/label_audit/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.label_issues import audit_labels
from gem_lightning.data.report import draw_label_issue_sheet
from gem_lightning.files.atomic_writes import folder_is_writable, write_text_atomically
from gem_lightning.files.locks import exclusive_lock
from gem_lightning.inference.backbone_features import prepared_image_features
from gem_lightning.models.classifier import GemClassifier

log = logging.getLogger(__name__)

SHEET_NAME = "label_issues.png"


def run_label_audit(model: GemClassifier, data: GemDataModule, settings: DictConfig) -> tuple[dict, Path | None]:
    """(the ``label_issues`` section, its thumbnail sheet or None) for ``data``'s prepared photos through
    ``model``'s backbone as it is now (pretrained, before training)."""
    options = OmegaConf.to_container(settings, resolve=True)
    shown = int(options.pop("shown"))
    features = prepared_image_features(model, data).numpy()
    items = data.prepared.items
    index_of = {name: i for i, name in enumerate(data.class_names)}
    labels = np.array([index_of[item.label] for item in items], dtype=np.int64)
    digest = hashlib.sha256(features.tobytes())
    digest.update(json.dumps([options, shown, [item.source for item in items], labels.tolist()]).encode())
    folder = data.prepared.report_file.parent
    cached, sheet = (folder / f"label_issues-{digest.hexdigest()[:16]}{suffix}" for suffix in (".json", ".png"))
    writable = folder_is_writable(folder, "paths.cache_dir")
    with exclusive_lock(cached.with_suffix(".lock")) if writable else nullcontext():
        if cached.is_file():
            section = json.loads(cached.read_text())
        else:
            photos = [(item.source, item.split) for item in items]
            section = {
                "backbone": f"{model.hparams.backbone} ({'ImageNet' if model.hparams.pretrained else 'untrained'})",
                **audit_labels(features, labels, data.class_names, photos, **options),
            }
            issues = section.get("issues", [])[:shown]
            if writable and issues:
                by_source = {item.source: item.image_file for item in items}
                listed = f"{len(issues)} of {len(section['issues'])}"
                title = f"photos whose label looks wrong (most suspicious first, {listed})"
                draw_label_issue_sheet(issues, [by_source[issue["path"]] for issue in issues], sheet, title)
            if writable:
                write_text_atomically(cached, json.dumps(section, indent=1))
    return section, sheet if sheet.is_file() else None


def describe(section: dict) -> str:
    """One line for the run's log: how many photos look mislabelled, and the most mixed class pair."""
    if "skipped" in section:
        return f"label audit skipped: {section['skipped']}"
    pairs = section["overlapping_classes"]
    mixed = f"; most mixed classes: {' / '.join(pairs[0]['classes'])}" if pairs else ""
    return (
        f"label audit ({section['backbone']}): {len(section['issues'])} of {section['photos']} photos look "
        f"mislabelled (out-of-fold accuracy {section['out_of_fold_accuracy']:.1%}){mixed}"
    )
