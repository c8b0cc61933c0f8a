"""The data report: what the model will be trained and tested on, and everything that was left out and why.

``data_report.json`` (images per class per split, skipped files, duplicate groups, label conflicts, test
images that duplicate train images, background-removal summary and fallbacks), a printed table, and a
contact sheet PNG showing a sample of prepared images per class, so a failed cut-out is seen at a glance.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from rich.console import Console
from rich.table import Table

from gem_lightning.data.duplicates import DuplicateGroup, DuplicateReport
from gem_lightning.data.scan import DatasetScan
from gem_lightning.data.splits import SplitPlan
from gem_lightning.files.atomic_writes import write_bytes_atomically, write_text_atomically

if TYPE_CHECKING:
    from gem_lightning.data.training_items import TrainingItem

REPORT_NAME = "data_report.json"
CONTACT_SHEET_NAME = "contact_sheet.png"
SPLITS = ("train", "val", "test")


def _where(group: DuplicateGroup, layout: str) -> str:
    if layout != "split_folders":
        return "within the folder"
    origins = sorted({m.origin for m in group.members})
    return f"within {origins[0]}" if len(origins) == 1 else "across " + "/".join(origins)


def _group_entry(group: DuplicateGroup, plan: SplitPlan) -> dict:
    return {
        "id": group.id,
        "kind": group.kind,
        "classes": list(group.labels),
        "members": [
            {"path": m.path, "class": m.label, "split": plan.assignment.get(m.path, "excluded")} for m in group.members
        ],
    }


def build_report(
    scan: DatasetScan,
    plan: SplitPlan,
    duplicates: DuplicateReport,
    items: Iterable[TrainingItem],
    settings: dict,
    background: dict | None,
) -> dict:
    """Everything as plain JSON types. ``settings`` describes the split; ``background`` the preparation."""
    items = list(items)
    per_class = {name: Counter() for name in scan.class_names}
    for item in items:
        per_class[item.label][item.split] += 1
    groups = duplicates.groups
    test_copies = [
        m.path for g in groups if any(x.origin == "train" for x in g.members) for m in g.members if m.origin == "test"
    ]
    exact_across = [
        m.path
        for g in groups
        for m in g.members
        if m.origin == "test" and any(x.origin == "train" and x.sha256 == m.sha256 for x in g.members)
    ]
    conflicts = [{**_group_entry(g, plan), "where": _where(g, scan.layout)} for g in duplicates.conflicts]
    per_source = {name: Counter() for name in scan.sources}
    for item in items:
        per_source[item.from_source][item.split] += 1
    return {
        "data_root": str(scan.root),
        "layout": scan.layout,
        "sources": {
            name: {"folder": str(scan.source_folders[name]), "images": {split: counts[split] for split in SPLITS}}
            for name, counts in per_source.items()
        },
        "split": settings,
        "classes": len(scan.class_names),
        "images": {split: sum(c[split] for c in per_class.values()) for split in SPLITS},
        "images_per_class": {name: {split: counts[split] for split in SPLITS} for name, counts in per_class.items()},
        "skipped": [{"path": f.path, "reason": f.skip_reason} for f in scan.skipped],
        "excluded": [{"path": path, "reason": reason} for path, reason in sorted(plan.excluded.items())],
        "duplicates": {
            "near_threshold": duplicates.threshold,
            "exact_groups": sum(g.kind == "exact" for g in groups),
            "near_groups": sum(g.kind == "near" for g in groups),
            "files_in_groups": sum(len(g.members) for g in groups),
            "redundant_files": sum(len(g.members) - 1 for g in groups),
            "test_images_duplicating_train": sorted(test_copies),
            "test_images_byte_identical_to_train": sorted(exact_across),
            "groups": [_group_entry(g, plan) for g in groups],
        },
        "label_conflicts": {
            "policy": settings.get("label_conflicts"),
            "exact": sum(c["kind"] == "exact" for c in conflicts),
            "near": sum(c["kind"] == "near" for c in conflicts),
            "groups": conflicts,
        },
        "leaked_test_images": {path: list(copies) for path, copies in sorted(plan.leaked.items())},
        "background": background,
    }


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or Console(soft_wrap=True)  # long paths stay on one line, for copy-paste
    table = Table(title=f"images per class ({report['data_root']}, split={report['split']['mode']})")
    table.add_column("class")
    for split in SPLITS:
        table.add_column(split, justify="right")
    for name, counts in report["images_per_class"].items():
        table.add_row(name, *(str(counts[split]) for split in SPLITS))
    table.add_row("[bold]total", *(f"[bold]{report['images'][split]}" for split in SPLITS))
    console.print(table)
    if len(report["sources"]) > 1:
        for name, source in report["sources"].items():
            counts = ", ".join(f"{split} {source['images'][split]}" for split in SPLITS)
            console.print(f"source {name} ({source['folder']}): {counts}", markup=False)
    for entry in report["skipped"]:
        console.print(f"skipped {entry['path']}: {entry['reason']}", markup=False)
    dup = report["duplicates"]
    identical = len(dup["test_images_byte_identical_to_train"])
    console.print(
        f"duplicates: {dup['exact_groups']} exact + {dup['near_groups']} near group(s), "
        f"{dup['files_in_groups']} files "
        f"({dup['redundant_files']} redundant); test images duplicating a train image: "
        f"{len(dup['test_images_duplicating_train'])} ({identical} byte-identical)",
        markup=False,
    )
    conflicts = report["label_conflicts"]
    console.print(
        f"label conflicts: {conflicts['exact']} exact + {conflicts['near']} near (policy: {conflicts['policy']})",
        markup=False,
    )
    for group in conflicts["groups"]:
        members = ", ".join(m["path"] for m in group["members"])
        console.print(f"  {group['kind']} {group['where']}: {members}", markup=False)
    if report["leaked_test_images"]:
        console.print(
            f"test images marked as leaked (duplicate a train image): {len(report['leaked_test_images'])}; "
            "evaluation reports test/ and test_leak_free/ metrics",
            markup=False,
        )
    background = report.get("background")
    if background:
        summary = background["summary"]
        console.print(
            f"background removal ({background['method']}): done {summary['done']}, cached {summary['cached']}, "
            f"skipped {summary['skipped']}, failed {summary['failed']} in {summary['seconds']:.1f} s "
            f"({summary['images_per_second']:.2f} images/s); cache {background['cache']}",
            markup=False,
        )
        for entry in background["fallbacks"]:
            console.print(f"  fallback {entry['path']}: {entry['reason']} -> {entry['action']}", markup=False)
        for path, error in summary["failures"].items():
            console.print(f"  failed {path}: {error}", markup=False)


def _mosaic(paths: list[Path], tile: int) -> Image.Image:
    """Up to four images letterboxed on black in a 2x2 tile."""
    sheet = Image.new("RGB", (2 * tile, 2 * tile))
    for index, path in enumerate(paths[:4]):
        with Image.open(path) as image:
            picture = image.convert("RGB")
        picture.thumbnail((tile, tile))
        x = (index % 2) * tile + (tile - picture.width) // 2
        y = (index // 2) * tile + (tile - picture.height) // 2
        sheet.paste(picture, (x, y))
    return sheet


def draw_contact_sheet(samples: dict[str, list[Path]], path: Path, title: str, tile: int = 96) -> None:
    """One 2x2 mosaic per class, six classes per row, written atomically as a PNG."""
    names = list(samples)
    columns = min(6, max(1, len(names)))
    rows = max(1, -(-len(names) // columns))
    height = 2.25 * rows + 0.4
    # Constrained layout keeps titles and the suptitle clear of the images, whatever the grid.
    figure = Figure(figsize=(2.0 * columns, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=10)
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(_mosaic(samples[name], tile))
        axes.set_title(name, fontsize=8)
        axes.axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomically(path, buffer.getvalue())


def draw_label_issue_sheet(issues: list[dict], images: list[Path], path: Path, title: str, tile: int = 128) -> None:
    """The suspicious photos (``images[i]`` for ``issues[i]``), eight a row, each captioned with its given class
    and the class it looks like, written atomically as a PNG."""
    columns = max(1, min(8, len(issues)))
    rows = max(1, -(-len(issues) // columns))
    figure = Figure(figsize=(1.9 * columns, 2.2 * rows + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=10)
    for index, (issue, image_file) in enumerate(zip(issues, images, strict=True)):
        with Image.open(image_file) as image:
            picture = image.convert("RGB")
        picture.thumbnail((tile, tile))
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(picture)
        axes.set_title(
            f"labelled {issue['given']}\nlooks like {issue['suggested']} {issue['p_suggested']:.2f}",
            fontsize=7,
            color="darkred",
        )
        axes.axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomically(path, buffer.getvalue())


def write_report(report: dict, folder: Path, samples: dict[str, list[Path]], title: str) -> Path:
    """Write the JSON, and the contact sheet unless the same samples are drawn already; returns the JSON path."""
    folder = Path(folder)
    report_path, sheet_path = folder / REPORT_NAME, folder / CONTACT_SHEET_NAME
    drawn = {name: [str(p) for p in paths] for name, paths in samples.items()}
    report = {**report, "contact_sheet": {"file": CONTACT_SHEET_NAME, "samples": drawn}}
    previous = None
    if report_path.is_file():
        try:
            previous = json.loads(report_path.read_text()).get("contact_sheet", {}).get("samples")
        except json.JSONDecodeError:
            previous = None
    if previous != drawn or not sheet_path.is_file():
        draw_contact_sheet(samples, sheet_path, title)
    write_text_atomically(report_path, json.dumps(report, indent=1))
    return report_path


def contact_sheet_samples(items: list[TrainingItem], class_names: tuple[str, ...], per_class: int = 4) -> dict:
    """The first few images of each class (train split first), as the model will see them."""
    order = {"train": 0, "val": 1, "test": 2}
    samples: dict[str, list[Path]] = {name: [] for name in class_names}
    for item in sorted(items, key=lambda i: (order[i.split], i.source)):
        if len(samples[item.label]) < per_class:
            samples[item.label].append(item.image_file)
    return samples
