"""BatchNorm statistics measured afresh on a set of photos (AdaBN): exact statistics, the checkpoint untouched."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from gem_lightning.cli import evaluate
from gem_lightning.data.image_dataset import evaluation_dataset
from gem_lightning.errors import GemLightningError
from gem_lightning.inference.batchnorm_adaptation import batchnorm_adapted
from tests.helpers.configs import composed_model


def test_the_copy_normalises_by_the_photos_own_statistics_and_the_model_is_left_as_it_was(tmp_path):
    generator = torch.Generator().manual_seed(0)
    files = []
    for index in range(8):  # bright, bluish photos: far from the statistics ImageNet-style init starts from
        pixels = (torch.rand(32, 32, 3, generator=generator) * 80 + torch.tensor([150, 150, 175])).byte()
        files.append((tmp_path / f"{index}.png", 0))
        Image.fromarray(pixels.numpy()).save(files[-1][0])
    dataset = evaluation_dataset(files, 32)
    model = composed_model(["a", "b"], tmp_path, ["data.image_size=32"]).eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}

    adapted = batchnorm_adapted(model, dataset, batch_size=4)  # two batches of four

    with torch.no_grad():  # what the first BatchNorm layer sees: the first convolution's output
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        activations = model.backbone.conv1((images.float() / 255 - model._mean) / model._std)
    norm = adapted.backbone.bn1
    # Two equal batches: the average of their means is the mean over all photos; their unbiased variances average.
    expected_mean = activations.mean(dim=(0, 2, 3))
    halves = activations.split(4)
    expected_var = torch.stack([half.var(dim=(0, 2, 3), unbiased=True) for half in halves]).mean(0)
    assert torch.allclose(norm.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(norm.running_var, expected_var, rtol=1e-4, atol=1e-6)
    assert int(norm.num_batches_tracked) == 2 and not adapted.training and not norm.training
    assert not torch.allclose(model.backbone.bn1.running_mean, expected_mean, atol=1e-2)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name

    with pytest.raises(GemLightningError, match="needs at least 2 photos"):
        batchnorm_adapted(model, evaluation_dataset(files[:1], 32))


def test_evaluate_adapts_to_each_folder_beside_the_plain_report(trained_demo_run, tmp_path):
    run = trained_demo_run
    folder = tmp_path / "dim_photos"
    for item in run.datamodule.prepared.items:
        if item.split == "test":
            (folder / item.label).mkdir(parents=True, exist_ok=True)
            with Image.open(item.image_file) as image:  # the same photos, under dimmer light
                dimmed = image.convert("RGB").point(lambda value: value // 2)
                dimmed.save(folder / item.label / f"{item.image_file.stem}.png")
    common = [f"ckpt={run.checkpoint}", f"input={folder}", "calibrate=false", f"cache_dir={tmp_path / 'cache'}"]
    assert evaluate.main(common) == 0
    assert evaluate.main([*common, "adapt_batchnorm=true"]) == 0
    reports = run.run_dir / "evaluation"
    plain = json.loads((reports / "dim_photos" / "evaluation.json").read_text())
    adapted = json.loads((reports / "dim_photos-bn-adapted" / "evaluation.json").read_text())
    assert "BatchNorm statistics adapted to the photos" in adapted["title"]
    assert plain["summary"]["images"] == adapted["summary"]["images"]
    # Halving the light shifts and scales every channel the first convolution sees, which its BatchNorm layer,
    # measured on these photos, undoes: 0.15 -> 0.70 top-1 here (0.55 on the photos as they were).
    assert adapted["summary"]["top1"] >= plain["summary"]["top1"] + 0.25, (plain["summary"], adapted["summary"])
    shutil.rmtree(reports / "dim_photos-bn-adapted")
    shutil.rmtree(reports / "dim_photos")
