"""Test-time views and checkpoint ensembles: one inference loop for predict, evaluate and the web page."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from gem_lightning.cli import adapt, evaluate, predict
from gem_lightning.data.background.cut_outs import BackgroundRemoval
from gem_lightning.errors import GemLightningError
from gem_lightning.inference import member_inputs
from gem_lightning.inference.logits import TTA_VIEWS
from gem_lightning.inference.predictor import Predictor
from gem_lightning.models.checkpoint_format import read_checkpoint
from tests.helpers.other_source import shop_photos


def _test_batch(run) -> torch.Tensor:
    dataset = run.datamodule.datasets["test"]
    return torch.stack([dataset[i][0] for i in range(min(6, len(dataset)))])


def test_views_are_the_eight_symmetries_of_a_square():
    image = torch.arange(16).reshape(1, 1, 4, 4)
    seen = {tuple(view(image).flatten().tolist()) for view in TTA_VIEWS["dihedral"]}
    assert len(seen) == 8 and tuple(image.flatten().tolist()) in seen
    assert [len(views) for views in TTA_VIEWS.values()] == [1, 2, 4, 8]


def test_tta_averages_each_views_calibrated_probabilities(trained_demo_run):
    predictor = Predictor(trained_demo_run.checkpoint, progress=False, tta="flip")
    images, model = _test_batch(trained_demo_run), predictor.model
    temperature = float(model.temperature)
    assert temperature != pytest.approx(1.0) and predictor.temperature == 1.0
    with torch.no_grad():
        expected = ((model(images) / temperature).softmax(-1) + (model(images.flip(-1)) / temperature).softmax(-1)) / 2
    torch.testing.assert_close(predictor.predict_tensor(images), expected)


def test_with_every_quarter_turn_and_mirror_a_turned_photo_gets_the_same_answer(trained_demo_run):
    images = _test_batch(trained_demo_run)
    plain = Predictor(trained_demo_run.checkpoint, progress=False)
    dihedral = Predictor(trained_demo_run.checkpoint, progress=False, tta="dihedral")
    turned = torch.rot90(images, 1, dims=(-2, -1))
    torch.testing.assert_close(dihedral.predict_tensor(turned), dihedral.predict_tensor(images))
    assert not torch.allclose(plain.predict_tensor(turned), plain.predict_tensor(images), atol=1e-4)


def test_an_ensemble_of_one_model_twice_predicts_as_the_model(trained_demo_run):
    run = trained_demo_run
    files = [path for path, _ in run.datamodule.datasets["test"].items][:5]
    single, _ = Predictor(run.checkpoint, progress=False).predict_files(files)
    twice, _ = Predictor([run.checkpoint, run.checkpoint], progress=False).predict_files(files)
    for one, two in zip(single, twice, strict=True):
        torch.testing.assert_close(one.probabilities, two.probabilities)


def test_ensemble_members_must_know_the_same_classes(trained_demo_run, tmp_path):
    checkpoint = torch.load(trained_demo_run.checkpoint, weights_only=True)
    renamed = [*checkpoint["gem_lightning"]["class_names"][:-1], "Unobtainium"]
    checkpoint["gem_lightning"]["class_names"] = renamed
    checkpoint["hyper_parameters"]["class_names"] = renamed
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    with pytest.raises(GemLightningError, match=r"other\.ckpt knows other classes than .*best\.ckpt"):
        Predictor([trained_demo_run.checkpoint, other], progress=False)
    with pytest.raises(GemLightningError, match="tta='spin': use one of none, flip, quarter_turns, dihedral"):
        Predictor(trained_demo_run.checkpoint, progress=False, tta="spin")


def test_evaluate_and_predict_take_a_list_of_checkpoints_and_views(trained_demo_run, tmp_path, capsys):
    run = trained_demo_run
    ensemble = f"ckpt=[{run.checkpoint},{run.checkpoint}]"
    assert evaluate.main([ensemble, "tta=flip", "calibrate=false", f"cache_dir={run.cache_dir}"]) == 0
    (folder,) = (run.run_dir / "evaluation").glob("test-ensemble2-*-tta-flip")
    summary = json.loads((folder / "evaluation.json").read_text())["summary"]
    single = json.loads((run.run_dir / "evaluation" / "test" / "evaluation.json").read_text())["summary"]
    assert "an ensemble of 2 checkpoints, tta=flip (2 views)" in (folder / "report.md").read_text()
    # One checkpoint twice is that checkpoint: the same figures as it alone, with the same views.
    alone = ["tta=flip", "calibrate=false", f"cache_dir={run.cache_dir}"]
    assert evaluate.main([f"ckpt={run.checkpoint}", *alone]) == 0
    single = json.loads((run.run_dir / "evaluation" / "test-tta-flip" / "evaluation.json").read_text())["summary"]
    assert summary["images"] == single["images"] and summary["top1"] == single["top1"]
    assert summary["nll_before"] == pytest.approx(single["nll_before"], abs=1e-6)
    # Another ensemble of two with the same first member writes its own folder, not over the first one's.
    copy = tmp_path / "copy.ckpt"
    shutil.copyfile(run.checkpoint, copy)
    other = [f"ckpt=[{run.checkpoint},{copy}]", "tta=flip", "calibrate=false", f"cache_dir={run.cache_dir}"]
    assert evaluate.main(other) == 0
    folders = sorted((run.run_dir / "evaluation").glob("test-ensemble2-*-tta-flip"))
    assert len(folders) == 2 and str(copy) in next(f for f in folders if f != folder).joinpath("report.md").read_text()
    assert str(copy) not in (folder / "report.md").read_text()

    photo = next(path for path, _ in run.datamodule.datasets["test"].items)
    output = tmp_path / "predictions.json"
    assert predict.main([ensemble, f"input={photo}", "tta=dihedral", f"output={output}"]) == 0
    document = json.loads(output.read_text())
    assert document["checkpoints"] == [str(run.checkpoint)] * 2 and document["tta"] == "dihedral"
    (prediction,) = document["predictions"]
    assert document["temperature"] == 1.0
    alone_output = tmp_path / "alone.json"
    assert predict.main([f"ckpt={run.checkpoint}", f"input={photo}", "tta=dihedral", f"output={alone_output}"]) == 0
    (alone,) = json.loads(alone_output.read_text())["predictions"]
    assert [row["class"] for row in prediction["top_k"]] == [row["class"] for row in alone["top_k"]]
    for pair, alone_row in zip(prediction["top_k"], alone["top_k"], strict=True):
        assert pair["probability"] == pytest.approx(alone_row["probability"], abs=1e-6)


def test_members_trained_on_photos_and_on_cut_outs_each_see_a_photo_their_own_way(
    trained_demo_run, trained_rembg_run, tmp_path, monkeypatch
):
    # The two tiny demo runs know the same classes: one trained on the photos, one on u2netp cut-outs.
    cut_run, whole_run = trained_rembg_run, trained_demo_run
    assert cut_run.class_names == whole_run.class_names
    module = cut_run.datamodule
    photos = [Path(module.root) / item.source for item in module.prepared.items if item.split == "test"][:6]
    options = {"cache_dir": cut_run.cache_dir, "progress": False}
    cut, _ = Predictor(cut_run.checkpoint, **options).predict_files(photos)
    whole, _ = Predictor(whole_run.checkpoint, **options).predict_files(photos)
    assert all(p.model_input != p.source for p in cut) and all(p.model_input == p.source for p in whole)
    ensemble = Predictor([whole_run.checkpoint, cut_run.checkpoint], **options)
    assert ensemble.describe_background() == "none (photos as they are); rembg u2netp"
    both, skipped = ensemble.predict_files(photos)
    assert not skipped and [p.source for p in both] == photos
    # Each member's calibrated probabilities of the photo prepared its own way, averaged.
    for one, other, averaged in zip(whole, cut, both, strict=True):
        torch.testing.assert_close(averaged.probabilities, (one.probabilities + other.probabilities) / 2)
        assert averaged.model_input == one.model_input  # the first member's view: what heat maps show

    # Members that prepare photos alike share the work: each photo is hashed once and cut out once.
    hashed, cut_out = [], []
    real_hash, real_prepare = member_inputs.file_sha256, BackgroundRemoval.prepare
    monkeypatch.setattr(member_inputs, "file_sha256", lambda path: hashed.append(path) or real_hash(path))
    monkeypatch.setattr(
        BackgroundRemoval,
        "prepare",
        lambda self, sources, *a, **k: cut_out.append(len(sources)) or real_prepare(self, sources, *a, **k),
    )
    three = Predictor([whole_run.checkpoint, cut_run.checkpoint, cut_run.checkpoint], **options)
    thirds, _ = three.predict_files(photos)
    assert sorted(hashed) == sorted(photos) and cut_out == [len(photos)]
    for one, other, averaged in zip(whole, cut, thirds, strict=True):
        torch.testing.assert_close(averaged.probabilities, (one.probabilities + 2 * other.probabilities) / 3)
    monkeypatch.undo()

    # evaluate on the first member's own test split: the other member cuts those photos out for itself.
    command = [
        f"ckpt=[{cut_run.checkpoint},{whole_run.checkpoint}]",
        "calibrate=false",
        f"cache_dir={options['cache_dir']}",
    ]
    assert evaluate.main(command) == 0
    (folder,) = (cut_run.run_dir / "evaluation").glob("test-ensemble2-*")
    report = (folder / "report.md").read_text()
    assert "rembg u2netp; none (photos as they are)" in report


def test_an_ensemble_adapts_member_by_member_and_its_curve_starts_at_evaluates_figure(
    trained_demo_run, trained_rembg_run, tmp_path
):
    # Copies, so that the adapted files written beside them stay out of the shared runs' folders.
    members = []
    for name, run in (("whole", trained_demo_run), ("cut", trained_rembg_run)):
        (tmp_path / name).mkdir()
        members.append(Path(shutil.copyfile(run.checkpoint, tmp_path / name / "best.ckpt")))
    # Six photos a class: u2netp cuts each out for the second member in about 0.5 s here.
    shop, labelled, rest = shop_photos(tmp_path / "photos", per_class=6)
    cache = f"cache_dir={trained_rembg_run.cache_dir}"
    ensemble = f"ckpt=[{members[0]},{members[1]}]"

    assert adapt.main([ensemble, f"input={labelled}", cache]) == 0
    adapted = [path.with_name("best-adapted-shop_labelled.ckpt") for path in members]
    # Each member is adapted on its own features (the cut-out member on the cut-outs): as if adapted alone.
    alone = tmp_path / "cut-alone.ckpt"
    assert adapt.main([f"ckpt={members[1]}", f"input={labelled}", f"output={alone}", cache]) == 0
    together, apart = (read_checkpoint(path)["gem_lightning"] for path in (adapted[1], alone))
    torch.testing.assert_close(together["source_prototypes"]["prototypes"], apart["source_prototypes"]["prototypes"])
    assert together["calibration"] == apart["calibration"]
    whole_prototypes = read_checkpoint(adapted[0])["gem_lightning"]["source_prototypes"]["prototypes"]
    assert not torch.allclose(whole_prototypes, together["source_prototypes"]["prototypes"])
    # One output file cannot hold two members.
    assert adapt.main([ensemble, f"input={labelled}", f"output={tmp_path / 'one.ckpt'}", cache]) == 2

    # The adapted ensemble, as evaluate takes it, recognises the rest of the source better than the original one.
    for name, ckpts in (("plain", members), ("adapted", adapted)):
        command = [f"ckpt=[{ckpts[0]},{ckpts[1]}]", f"input={rest}", "calibrate=false", cache]
        assert evaluate.main([*command, f"output_dir={tmp_path / name}"]) == 0
    plain, adapted_summary = (
        json.loads((tmp_path / name / "evaluation.json").read_text())["summary"] for name in ("plain", "adapted")
    )
    assert adapted_summary["recall_mean"] >= plain["recall_mean"] + 0.15, (plain, adapted_summary)

    # The curve of the ensemble: its N = 0 is evaluate's figure for the ensemble on the same photos.
    curve = [ensemble, f"input=[{shop}]", "curve=true", "shots=[0,3]", "draws=1", f"output_dir={tmp_path / 'curve'}"]
    assert adapt.main([*curve, cache]) == 0
    (table,) = (tmp_path / "curve").glob("adaptation-ensemble2-*.csv")
    with open(table) as file:
        points = list(csv.DictReader(file))
    on_shop = [f"ckpt=[{members[0]},{members[1]}]", f"input={shop}", "calibrate=false", cache]
    assert evaluate.main([*on_shop, f"output_dir={tmp_path / 'shop'}"]) == 0
    summary = json.loads((tmp_path / "shop" / "evaluation.json").read_text())["summary"]
    assert float(points[0]["recall_mean"]) == summary["recall_mean"]
    assert points[0]["set_coverage"] == "" and float(points[1]["recall_mean"]) >= summary["recall_mean"] + 0.15
    assert "prediction sets:" not in table.with_suffix(".md").read_text()  # an ensemble has none: no empty table
