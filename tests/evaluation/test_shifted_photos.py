"""Shifted copies of a split (small, white, grey, small_white): deterministic, and evaluated as users' photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gem_lightning.cli import evaluate
from gem_lightning.data.background.backends import RembgBackend
from gem_lightning.data.shifted_photos import SHIFTS, build_shifted_folder, shifted_photo
from gem_lightning.errors import GemLightningError
from tests.helpers.workplace import U2NET_DIR, needs_shared


def _stone_photo(path, size=(300, 200)) -> None:
    """A red oval stone on a black cloth."""
    image = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(image).ellipse((90, 40, 210, 160), fill=(200, 30, 40))
    image.save(path)


def test_small_is_a_96_px_jpeg_and_the_same_every_time(tmp_path):
    photo = tmp_path / "ruby.png"
    _stone_photo(photo)
    first = build_shifted_folder([(photo, "Ruby")], "small", tmp_path / "cache")
    (made,) = (first / "Ruby").iterdir()
    image = Image.open(made)
    assert max(image.size) == 96 and image.size == (96, 64)
    original = np.asarray(Image.open(photo).resize((96, 64), Image.LANCZOS), dtype=int)
    assert 0 < np.abs(np.asarray(image, dtype=int) - original).mean() < 8  # JPEG artefacts, not another photo
    data = made.read_bytes()
    made.unlink()
    build_shifted_folder([(photo, "Ruby")], "small", tmp_path / "cache")
    assert made.read_bytes() == data
    with pytest.raises(GemLightningError, match="shift='tiny': use one of small, white, grey, small_white"):
        build_shifted_folder([(photo, "Ruby")], "tiny", tmp_path / "cache")


@needs_shared(U2NET_DIR)
def test_white_keeps_the_stone_and_whitens_the_rest_with_the_real_rembg_mask(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(U2NET_DIR))
    photo = tmp_path / "ruby.png"
    _stone_photo(photo)
    shifted = np.asarray(shifted_photo(Image.open(photo).convert("RGB"), SHIFTS["white"], RembgBackend("u2netp")))
    assert (shifted[:20, :40] > 240).all()  # the cloth is white now
    centre = shifted[90:110, 140:160].reshape(-1, 3).mean(0)
    assert centre[0] > 150 and centre[1] < 80  # the stone is still red


def test_evaluate_shift_small_reports_beside_the_clean_split(trained_demo_run, capsys):
    run = trained_demo_run
    argv = [f"ckpt={run.checkpoint}", "shift=small", "calibrate=false", f"cache_dir={run.cache_dir}"]
    assert evaluate.main(argv) == 0
    summary = json.loads((run.run_dir / "evaluation" / "test-shift-small" / "evaluation.json").read_text())["summary"]
    assert summary["images"] == len(run.datamodule.datasets["test"]) and 0 <= summary["top1"] <= 1
    assert evaluate.main([f"ckpt={run.checkpoint}", "shift=small", "input=elsewhere"]) != 0
    assert "shift= shifts the run's own split" in capsys.readouterr().err


def test_a_missing_mask_model_for_a_shift_names_the_evaluate_key(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "models"))
    photo = tmp_path / "ruby.png"
    _stone_photo(photo)
    with pytest.raises(GemLightningError) as raised:
        build_shifted_folder([(photo, "Ruby")], "white", tmp_path / "cache")
    message = str(raised.value)
    assert "u2netp.onnx" in message and str(tmp_path / "models") in message
    assert "shift_mask_model=u2netp" in message and message.endswith("choose another model with shift_mask_model=.")
    assert "background" not in message, "a shift's mask model is not background removal's"
    assert not (tmp_path / "cache").exists()
