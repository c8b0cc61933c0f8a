"""README.md's commands on the Kaggle photos (``data/gemstones`` in the clone links ../shared's): the Kaggle
recipes, preparation with the real rembg model and the benchmark; each run as a user types it, in a fresh clone
of this working tree (``tests/helpers/readme_commands.py``).
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gem_lightning.files.hashing import file_sha256
from gem_lightning.models.classifier import GemClassifier
from tests.helpers.readme_commands import (
    COMMAND_TESTS,
    HAS_CUDA,
    _one_error_line,
    _report_top1,
    _value,
    check_every_command_of_the_module_ran,
    readme_commands,
)
from tests.helpers.workplace import GEMSTONES_DIR, OTHER_SOURCES_DIR, U2NET_DIR, needs_shared

# -- the Kaggle photos ---------------------------------------------------------------------------------------

KAGGLE_SHRINK = ("data.max_classes=3", "data.image_size=64", "trainer.max_epochs=1")


# The commands that run u2netp on every photo (about 0.5 s a photo on one core here) take a few of Kaggle's photos
# in Kaggle's layout: the first two classes, 10 training and 2 test photos of each.
FEW_CLASSES, FEW_TRAIN, FEW_TEST = 2, 10, 2


@pytest.fixture(scope="module")
def few_kaggle_photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("few_kaggle_photos")
    for name in sorted(p.name for p in (GEMSTONES_DIR / "train").iterdir())[:FEW_CLASSES]:
        for split, count in (("train", FEW_TRAIN), ("test", FEW_TEST)):
            (folder / split / name).mkdir(parents=True)
            for photo in sorted((GEMSTONES_DIR / split / name).glob("*.jpg"))[:count]:
                shutil.copy(photo, folder / split / name / photo.name)
    return folder


def _masked_shrink(photos: Path) -> tuple[str, ...]:
    return (f"data.root={photos}", *KAGGLE_SHRINK[1:])


def _kaggle_run(clone, command: str, env: dict[str, str] | None = None, shrink=KAGGLE_SHRINK, **placeholders) -> dict:
    result = clone.run(command, *shrink, placeholders=placeholders, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = clone.root / _value(result.stdout, "run dir")
    report = json.loads((run_dir / "data_report.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    # One measurement, one number: the logged test/acc is what the run's evaluation report counted.
    assert metrics["test/acc"] == pytest.approx(_report_top1(run_dir), abs=1e-6) and "test/ece_calibrated" in metrics
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    return {"report": report, "metrics": metrics, "best_checkpoint": best, "output": result.stdout + result.stderr}


@needs_shared(GEMSTONES_DIR)
def test_kaggle_pooled(clone):
    run = _kaggle_run(clone, "python train.py model=efficientnet_lite0")
    assert run["report"]["split"]["mode"] == "pooled"


@needs_shared(GEMSTONES_DIR)
def test_kaggle_predefined(clone):
    run = _kaggle_run(clone, "python train.py model=efficientnet_lite0 data.split=predefined")
    assert run["report"]["split"]["mode"] == "predefined"


@needs_shared(GEMSTONES_DIR)
def test_kaggle_elsewhere(clone, tmp_path):
    # A flat copy of three classes elsewhere, none of them among the three the default folder would give
    # (Alexandrite, Almandine, Amazonite): a run that ignored data.root would train on other classes.
    elsewhere = tmp_path / "my gems"
    for name in ("Ruby", "Tanzanite", "Zircon"):
        (elsewhere / name).mkdir(parents=True)
        for photo in sorted((GEMSTONES_DIR / "train" / name).glob("*.jpg"))[:12]:
            shutil.copy(photo, elsewhere / name / photo.name)
    run = _kaggle_run(
        clone,
        "python train.py model=efficientnet_lite0 data.root=/path/to/gemstones",
        **{"/path/to/gemstones": shlex.quote(str(elsewhere))},
    )
    report = run["report"]
    assert (report["data_root"], report["layout"]) == (str(elsewhere), "flat")
    assert sorted(report["images_per_class"]) == ["Ruby", "Tanzanite", "Zircon"]
    assert sum(report["images"].values()) == 36


@needs_shared(GEMSTONES_DIR)
def test_best_cpu(clone):
    run = _kaggle_run(clone, "python train.py experiment=best_cpu")
    assert run["report"]["split"]["mode"] == "predefined"
    checkpoint = torch.load(clone.root / run["best_checkpoint"], map_location="cpu", weights_only=True)
    config = checkpoint["gem_lightning"]["config"]
    assert config["scheduler"]["_target_"] == "gem_lightning.models.lr_schedules.warmup_cosine"
    assert (config["model"]["backbone"], config["augment"]["name"]) == ("efficientnet_lite0", "colour_preserving")
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert {group["name"] for group in groups} == {"backbone", "head"}
    # The stem and three stages stay as pretrained: the optimiser holds only what trains.
    assert config["model"]["frozen_stages"] == 3
    assert "in eval mode at the start of training" not in run["output"]  # frozen on purpose: no warning
    trainable = sum(len(group["params"]) for group in groups)
    model = GemClassifier.from_checkpoint(clone.root / run["best_checkpoint"])
    stem = [model.backbone.conv_stem, model.backbone.bn1]
    frozen = [p for part in (*stem, *model.backbone.blocks[:3]) for p in part.parameters()]
    assert trainable == len(list(model.parameters())) - len(frozen)


@needs_shared(GEMSTONES_DIR)
@needs_shared(OTHER_SOURCES_DIR)
def test_best_cpu_with_your_own_photos(clone):
    # Six photos each of two of the three classes the shrunk run keeps, from another source than Kaggle's.
    shop = clone.root / "my_shop"
    for name in ("Alexandrite", "Almandine"):
        (shop / name).mkdir(parents=True)
        for photo in sorted((OTHER_SOURCES_DIR / "kaggle-style-extras" / name).glob("*.jpg"))[:6]:
            shutil.copy(photo, shop / name / photo.name)
    try:
        run = _kaggle_run(clone, "python train.py experiment=best_cpu data.extra_roots=[my_shop/]")
    finally:
        shutil.rmtree(shop)
    sources = run["report"]["sources"]
    assert list(sources) == ["gemstones", "my_shop"]
    assert sources["my_shop"]["images"] == {"train": 8, "val": 2, "test": 2}  # 4/1/1 of each class's 6
    run_dir = (clone.root / run["best_checkpoint"]).parent.parent
    parts = {
        source: json.loads((run_dir / "evaluation" / f"test-{source}" / "evaluation.json").read_text())["summary"]
        for source in sources
    }
    assert parts["my_shop"]["images"] == 2 and parts["gemstones"]["images"] == sources["gemstones"]["images"]["test"]
    assert "test photos of my_shop: 2" in run["output"]


def test_seed_report_names_the_missing_weights(clone):
    # This machine has no network: the download the run tries fails at once (a server that is reached is
    # tests/models/test_weights_download.py's), and the run stops with the offline line.
    started = time.monotonic()
    result = clone.run("python train.py experiment=seed_report")
    line = _one_error_line(result)
    assert line.startswith("error: pretrained weights for resnet18 could not be downloaded (")
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert f"copy resnet18-f37072fd.pth from {url} into {clone.torch_home / 'hub' / 'checkpoints'} " in line
    assert "model.pretrained=false" in line and "model=efficientnet_lite0" in line
    assert "scan" not in result.stderr and "fingerprinting" not in result.stderr  # before any data work
    assert time.monotonic() - started < 60


def test_gpus_1_says_what_is_missing(clone):
    result = clone.run("python train.py model=resnet18 trainer.gpus=1", *KAGGLE_SHRINK)
    if HAS_CUDA:  # trains where the weights can be downloaded; offline, the one line naming them
        assert result.returncode == 0 or "resnet18-f37072fd.pth" in _one_error_line(result), result.stderr[-3000:]
    else:
        assert "trainer.gpus=1 asks for 1 GPU(s) but this machine has 0" in _one_error_line(result)


def test_gpu_check(clone):
    command = (
        "python -m gem_lightning.cli.bench data_dir=data/gemstones && python train.py experiment=gpu_check "
        "data.root=data/gemstones"
    )
    bench, train = (part.strip() for part in command.split("&&"))
    assert bench in COMMAND_TESTS  # its first half is test_bench's command
    if not HAS_CUDA:
        assert "GPU" in _one_error_line(clone.run(train))
        return
    result = clone.run(train, "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]


# -- preparation with the real rembg model ------------------------------------------------------------------


@needs_shared(U2NET_DIR / "u2netp.onnx")
@needs_shared(GEMSTONES_DIR)
def test_prepare(clone, few_kaggle_photos):
    block = [c for c in readme_commands() if "u2netp" in c or c.startswith("export U2NET_HOME")]
    export, check, prepare, train = block
    name, value = export.removeprefix("export ").split("=")
    env = {name: value}  # relative to the clone, as README.md's block is
    shrink = (f"data.root={few_kaggle_photos}",)

    result = clone.run(check, *shrink, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok: ") and not (clone.root / "cache" / "prepared").exists()

    result = clone.run(prepare, *shrink, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    cut_outs = list((clone.root / "cache" / "prepared").rglob("*.png"))
    photos = list(few_kaggle_photos.rglob("*.jpg"))
    assert len(photos) == FEW_CLASSES * (FEW_TRAIN + FEW_TEST)
    images = len({file_sha256(p) for p in photos})  # one cut-out per distinct file content
    assert len(cut_outs) == images

    result = clone.run(train, *shrink, "data.image_size=64", "trainer.max_epochs=1", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((clone.root / _value(result.stdout, "run dir") / "data_report.json").read_text())
    assert report["background"]["summary"]["done"] == 0  # prepare did it all: train.py only read the cache
    assert report["background"]["summary"]["cached"] == images


def _u2net_home() -> dict[str, str]:
    """'with U2NET_HOME set as above': the variable test_prepare's README block exports."""
    export = next(c for c in readme_commands() if c.startswith("export U2NET_HOME"))
    name, value = export.removeprefix("export ").split("=")
    return {name: value}


@needs_shared(U2NET_DIR / "u2netp.onnx")
@needs_shared(GEMSTONES_DIR)
def test_robust_cpu(clone, few_kaggle_photos):
    run = _kaggle_run(
        clone, "python train.py experiment=robust_cpu", env=_u2net_home(), shrink=_masked_shrink(few_kaggle_photos)
    )
    checkpoint = torch.load(clone.root / run["best_checkpoint"], map_location="cpu", weights_only=True)
    config = checkpoint["gem_lightning"]["config"]
    assert config["task_name"] == "robust_cpu" and config["augment"]["name"] == "colour_safe_auto"
    assert config["background_swap"]["probability"] == 0.5
    # Everything else is best_cpu's.
    assert config["model"]["frozen_stages"] == 3 and config["data"]["split"] == "predefined"
    assert config["scheduler"]["_target_"] == "gem_lightning.models.lr_schedules.warmup_cosine"
    assert "background swap: 50% of training photos" in run["output"]


@needs_shared(U2NET_DIR / "u2netp.onnx")
@needs_shared(GEMSTONES_DIR)
def test_framed_cpu(clone, few_kaggle_photos, tmp_path):
    run = _kaggle_run(
        clone, "python train.py experiment=framed_cpu", env=_u2net_home(), shrink=_masked_shrink(few_kaggle_photos)
    )
    checkpoint = torch.load(clone.root / run["best_checkpoint"], map_location="cpu", weights_only=True)
    config = checkpoint["gem_lightning"]["config"]
    assert config["task_name"] == "framed_cpu" and config["model"]["frozen_stages"] == 3  # best_cpu otherwise
    assert (config["background"]["backend"]["model"], config["background"]["frame"]) == ("u2netp", "stone")
    # Every photo was cut out (none left as it was), and each cut-out is the square around its stone.
    # The clone's cache holds other tests' cut-outs too: the run's report names its own variant.
    variant = Path(run["report"]["background"]["cache"])
    assert run["report"]["background"]["settings"]["frame"] == "stone"
    records = {p: json.loads(p.read_text()) for p in variant.rglob("*.json")}
    summary = run["report"]["background"]["summary"]
    assert len(records) == summary["done"] + summary["cached"] > 0
    assert all(r["method"] == "rembg u2netp" and r["width"] == r["height"] for r in records.values()), records
    # A photo to identify is framed the same way: a table-top photo (960x540) becomes the square around its stone.
    photos = tmp_path / "my_photos"
    photos.mkdir()
    shutil.copy(next((OTHER_SOURCES_DIR / "tumbled-stones-in-frame" / "Amethyst").glob("*.jpg")), photos)
    result = clone.run(
        "python -m gem_lightning.cli.predict ckpt=<best checkpoint> input=my_photos/ output=predictions.json",
        placeholders={"<best checkpoint>": run["best_checkpoint"], "my_photos/": f"{photos}/"},
        env=_u2net_home(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (added,) = [json.loads(p.read_text()) for p in variant.rglob("*.json") if p not in records]
    assert added["method"] == "rembg u2netp" and added["width"] == added["height"], added


@needs_shared(U2NET_DIR / "u2netp.onnx")
@needs_shared(GEMSTONES_DIR)
def test_best_cpu_with_background_swap(clone, few_kaggle_photos):
    run = _kaggle_run(
        clone,
        "python train.py experiment=best_cpu background_swap=random",
        env=_u2net_home(),
        shrink=_masked_shrink(few_kaggle_photos),
    )
    assert (
        "background swap: 50% of training photos on plain/gradient/noise backgrounds (rembg u2netp masks)"
        in (run["output"])
    )
    checkpoint = torch.load(clone.root / run["best_checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["gem_lightning"]["config"]["background_swap"]["probability"] == 0.5
    # One mask per image of the run's split, at the training squares' side (9/7 of 64 px), cached.
    (masks,) = (clone.root / "cache" / "image_arrays").glob("*-mask-u2netp.npy")
    images = sum(run["report"]["images"].values())
    assert np.load(masks, mmap_mode="r").shape == (images, 82, 82)


# -- the benchmark -------------------------------------------------------------------------------------------


# User-typeable settings that shrink the benchmark to a few batches of 32 px images (its figures then say
# nothing about speed); the photos stay the ones README's data_dir= names.
BENCH_SHRINK = (
    "image_size=32",
    "batch_size=8",
    "warmup_batches=1",
    "timed_batches=2",
    "loader_batches=2",
    "head_epochs=2",
    # Loaders in the measuring processes themselves: starting loader processes in each of its fresh processes
    # cost about a minute here (README's demo run, as typed, loads with processes).
    "num_workers=0",
)


@needs_shared(GEMSTONES_DIR)
def test_bench(clone):
    result = clone.run("python -m gem_lightning.cli.bench data_dir=data/gemstones", *BENCH_SHRINK)
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted((clone.root / "outputs" / "bench").glob("*/bench.json"))
    assert len(written) == 1
    document = json.loads(written[0].read_text())
    # The Kaggle photos under data/gemstones, their train/ part, as README says.
    assert document["photos"] == str((clone.root / "data" / "gemstones" / "train").resolve())
    assert (document["image_size"], document["tiny"]) == (32, False)
    rows = document["rows"]
    measures = [row["measure"] for row in rows]
    assert measures == [
        "data loader, rotate/crop/flip",
        "data loader, no augmentation",
        "data loader, for augmentation on the GPU",
        "augmentation on the CPU",
        "training",
        "evaluation",
        "head-only epoch, cached features",
    ]
    for row in rows:
        assert row["ours"] > 0 and row["plain"] > 0, row
    assert rows[4]["plain_mb"] > 0 and rows[4]["ours_mb"] > 0  # training
    assert (written[0].parent / "bench.md").read_text().count("\n| ") == 1 + len(measures)  # header + rows
    assert all(measure in result.stdout for measure in measures)  # the printed table


# -- last: every README command of this module ran -----------------------------------------------------------


def test_every_readme_command_ran(request):
    """Runs last (file order): each README command whose test is in this module was run by it, as shown."""
    check_every_command_of_the_module_ran(request)
