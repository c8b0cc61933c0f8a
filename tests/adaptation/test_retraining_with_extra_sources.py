"""Adapting by retraining: the run trains on a few labelled photos of the user's source beside its own
(``data.extra_roots``), recognises the rest of that source better, and shows those photos as nearest examples;
adapting it with the same photos fits its temperature and sets on those it did not train on."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from gem_lightning.adaptation.adapted_checkpoint import adapt_checkpoints
from gem_lightning.cli import evaluate
from gem_lightning.evaluation.checkpoint_evaluation import labelled_folder
from gem_lightning.inference.predictor import Predictor
from gem_lightning.training.run import train
from tests.helpers.configs import TINY_DEMO, compose_config
from tests.helpers.other_source import shop_photos

# trained_demo_run's recipe, so the two runs differ only by the source's photos.
DEMO_RUN = [*TINY_DEMO, "data.demo.images_per_class=16", "trainer.max_epochs=2"]


def _recall_on(checkpoint: Path, folder: Path, tmp_path: Path, name: str) -> float:
    output = tmp_path / name
    command = [f"ckpt={checkpoint}", f"input={folder}", "calibrate=false", f"output_dir={output}"]
    assert evaluate.main([*command, f"cache_dir={tmp_path / 'cache'}"]) == 0
    return json.loads((output / "evaluation.json").read_text())["summary"]["recall_mean"]


def test_a_run_with_the_sources_labelled_photos_recognises_the_rest_of_it(trained_demo_run, tmp_path, caplog):
    # 6 labelled photos a class of the shop (split 4/1/1 per class), 5 others a class to measure on.
    _, labelled, rest = shop_photos(tmp_path, per_class=11, labelled=6)
    cfg = compose_config([*DEMO_RUN, f"data.extra_roots=[{labelled}]"], tmp_path / "work")
    result = train(cfg)
    GlobalHydra.instance().clear()
    report = json.loads(result.datamodule.prepared.report_file.read_text())
    assert report["sources"]["shop_labelled"]["images"] == {"train": 40, "val": 10, "test": 10}
    # The run reports its test split whole and each source's part of it, and the parts add up to the whole.
    evaluation = Path(result.report).parent.parent
    whole, *parts = (
        json.loads((evaluation / name / "evaluation.json").read_text())["summary"]
        for name in ("test", "test-demo_gems", "test-shop_labelled")
    )
    assert [part["images"] for part in parts] == [report["sources"]["demo_gems"]["images"]["test"], 10]
    assert sum(part["top1"] * part["images"] for part in parts) == pytest.approx(whole["top1"] * whole["images"])
    # evaluate split_source= gives the run's own figure for that part (one number per measurement).
    command = [f"ckpt={result.best_checkpoint}", "calibrate=false", f"cache_dir={tmp_path / 'cache'}"]
    assert evaluate.main([*command, "split_source=shop_labelled", f"output_dir={tmp_path / 'part'}"]) == 0
    again = json.loads((tmp_path / "part" / "evaluation.json").read_text())["summary"]
    assert (again["images"], again["recall_mean"]) == (parts[1]["images"], parts[1]["recall_mean"])
    assert evaluate.main([*command, "split_source=my_shop"]) == 2  # one line naming the sources there are

    plain = _recall_on(trained_demo_run.checkpoint, rest, tmp_path, "plain")
    retrained = _recall_on(Path(result.best_checkpoint), rest, tmp_path, "retrained")
    assert retrained >= plain + 0.15, (plain, retrained)  # 0.20 -> 0.52 here

    # The run's nearest training photos include the shop's, found where they are.
    predictor = Predictor(result.best_checkpoint, cache_dir=tmp_path / "cache", progress=False)
    photos = [Path(predictor.training_photos["root"]) / file for file in predictor.training_photos["files"]]
    from_shop = [photo for photo in photos if photo.is_relative_to(labelled)]
    assert len(from_shop) == 40 and all(photo.is_file() for photo in from_shop)

    # Adapted with the same labelled folder, the prototypes take all 60 photos, and the temperature, sets and
    # answer threshold the 20 the network did not train on: fitted on its training photos they would be too sure.
    cache = tmp_path / "cache"
    adapted = adapt_checkpoints(predictor, labelled, weight=40.0, output=tmp_path / "adapted.ckpt")[0].fits
    _, _, order = labelled_folder(predictor, labelled, cache)
    assert adapted.fitted_on.tolist() == [photo not in from_shop for photo in order]
    assert int(adapted.prototypes.photos.sum()) == 60 and adapted.calibration.images == 20
    # A folder of photos it trained on only: fitted on all of them, and one warning says they will be too sure.
    trained_only = tmp_path / "trained_only"
    for photo in from_shop:
        (trained_only / photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(photo, trained_only / photo.parent.name / photo.name)
    with caplog.at_level(logging.WARNING):
        fits = adapt_checkpoints(predictor, trained_only, weight=40.0, output=tmp_path / "too_sure.ckpt")[0].fits
    assert bool(fits.fitted_on.all())
    assert "trained on every one of the 40 labelled photos of trained_only" in caplog.text
