"""Background removal with the real rembg u2netp model and real OpenCV GrabCut on real gem photos: the cut-out,
the content-keyed cache, resuming a killed run, fallbacks, and never touching the user's originals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gem_lightning.data.background.backends import GrabCutBackend, RembgBackend
from gem_lightning.data.background.cut_out_job import SourceImage, load_downscaled
from gem_lightning.data.background.cut_outs import BackgroundRemoval
from gem_lightning.errors import GemLightningError
from gem_lightning.files.hashing import file_sha256
from tests.helpers.workplace import (
    GEMSTONES_DIR,
    OTHER_SOURCES_DIR,
    REPO_ROOT,
    U2NET_DIR,
    checkout_env,
    needs_shared,
)

# Real Kaggle photos of single stones on plain light backgrounds, large and small, one a PNG named .jpg.
REAL_PHOTOS = (
    "train/Ruby/ruby_10.jpg",
    "train/Emerald/emerald_12.jpg",
    "train/Almandine/almandine_21.jpg",
    "test/Sapphire Blue/sapphire blue_3.jpg",
)


@pytest.fixture
def u2net_home(monkeypatch) -> Path:
    monkeypatch.setenv("U2NET_HOME", str(U2NET_DIR))
    return U2NET_DIR


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """Writable copies of real photos: a folder whose files the preparation could touch, but must not."""
    folder = tmp_path / "photos"
    for relative in REAL_PHOTOS:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(GEMSTONES_DIR / relative, target)
    return folder


def _sources(folder: Path) -> list[SourceImage]:
    return [SourceImage(file_sha256(p), p) for p in sorted(folder.rglob("*.jpg"))]


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {str(p.relative_to(folder)): (file_sha256(p), p.stat().st_mtime_ns) for p in files}


def _border_is_black(pixels: np.ndarray, width: int = 2) -> float:
    """Share of the outer frame's pixels that are (nearly) black."""
    frame = np.concatenate(
        [
            pixels[:width].reshape(-1, 3),
            pixels[-width:].reshape(-1, 3),
            pixels[:, :width].reshape(-1, 3),
            pixels[:, -width:].reshape(-1, 3),
        ]
    )
    return float((frame.max(axis=1) < 16).mean())


def _check_cut_outs(records: dict, sources: list[SourceImage], variant: Path, max_side: int) -> None:
    for source in sources:
        record = records[source.sha256]
        assert record["method"] != "original" and not record["flag"], record
        with Image.open(variant / record["file"]) as prepared:
            assert prepared.mode == "RGB" and prepared.format == "PNG"
            pixels = np.asarray(prepared)
        original = load_downscaled(source.path, max_side)
        with Image.open(source.path) as stored:
            assert max(pixels.shape[:2]) == min(max_side, max(stored.size))
        assert pixels.shape[:2] == (original.height, original.width)
        assert _border_is_black(pixels) > 0.95, f"{source.path}: background left at the border"
        assert 0.03 < record["foreground"] < 0.95, record
        # The stone is kept: the centre of the cut-out is the photo's own centre, not black.
        h, w = pixels.shape[:2]
        centre = (slice(int(h * 0.4), int(h * 0.6)), slice(int(w * 0.4), int(w * 0.6)))
        kept = np.asarray(original)[centre].astype(int)
        assert pixels[centre].max() > 40
        assert np.abs(pixels[centre].astype(int) - kept).mean() < 12


@needs_shared(U2NET_DIR / "u2netp.onnx")
def test_rembg_u2netp_cuts_real_gems_onto_black_and_caches_them(tmp_path, u2net_home, photo_folder):
    before = _snapshot(photo_folder)
    removal = BackgroundRemoval(RembgBackend("u2netp"), max_side=192, workers=1, progress=False)
    sources = _sources(photo_folder)
    records, summary = removal.prepare(sources, tmp_path / "cache")
    assert (summary.done, summary.cached, summary.failed) == (len(sources), 0, 0)
    variant = removal.variant_dir(tmp_path / "cache")
    assert variant.name.startswith("rembg-u2netp-192px-")
    _check_cut_outs(records, sources, variant, 192)

    stored = {p: p.stat().st_mtime_ns for p in variant.rglob("*.png")}
    again, second = removal.prepare(sources, tmp_path / "cache")
    assert (second.done, second.cached) == (0, len(sources)), "a second run must be a pure cache hit"
    assert {p: p.stat().st_mtime_ns for p in variant.rglob("*.png")} == stored
    assert again == records
    assert _snapshot(photo_folder) == before, "the user's photos must never change"


@needs_shared(GEMSTONES_DIR)
def test_grabcut_cuts_real_gems_onto_black_without_any_model(tmp_path, photo_folder, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-models-here"))
    before = _snapshot(photo_folder)
    removal = BackgroundRemoval(GrabCutBackend(), max_side=192, workers=2, progress=False)
    sources = _sources(photo_folder)
    records, summary = removal.prepare(sources, tmp_path / "cache")
    assert (summary.done, summary.failed) == (len(sources), 0)
    _check_cut_outs(records, sources, removal.variant_dir(tmp_path / "cache"), 192)
    assert removal.prepare(sources, tmp_path / "cache")[1].done == 0
    assert _snapshot(photo_folder) == before


@needs_shared(U2NET_DIR / "u2netp.onnx")
def test_implausible_masks_follow_the_fallback_and_are_recorded(tmp_path, u2net_home, photo_folder):
    sources = _sources(photo_folder)[:2]
    # No real mask keeps over 99.9% of a gem photo, so every image takes the fallback path.
    strict = {"max_side": 96, "min_foreground": 0.0, "max_foreground": 0.001, "workers": 1, "progress": False}

    kept, _ = BackgroundRemoval(RembgBackend("u2netp"), fallback="original", **strict).prepare(sources, tmp_path)
    for source in sources:
        record = kept[source.sha256]
        assert record["method"] == "original" and "gem not separated" in record["flag"]
    original_variant = BackgroundRemoval(RembgBackend("u2netp"), fallback="original", **strict).variant_dir(tmp_path)
    with Image.open(original_variant / kept[sources[0].sha256]["file"]) as prepared:
        assert np.array_equal(np.asarray(prepared), np.asarray(load_downscaled(sources[0].path, 96)))

    dropped, summary = BackgroundRemoval(RembgBackend("u2netp"), fallback="drop", **strict).prepare(sources, tmp_path)
    assert summary.done == len(sources)
    assert all(r["file"] is None and r["method"] == "dropped" for r in dropped.values())

    second, _ = BackgroundRemoval(RembgBackend("u2netp"), fallback="grabcut", **strict).prepare(sources, tmp_path)
    assert all("GrabCut too" in r["flag"] and r["method"] == "original" for r in second.values())


def test_a_missing_rembg_model_is_one_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "models"))
    removal = BackgroundRemoval(RembgBackend("u2net"), workers=1, progress=False)
    with pytest.raises(GemLightningError) as raised:
        removal.prepare([SourceImage("0" * 64, tmp_path / "x.jpg")], tmp_path / "cache")
    message = str(raised.value)
    assert "u2net.onnx" in message and str(tmp_path / "models") in message and "U2NET_HOME" in message
    assert message.endswith("or use background=grabcut, which needs no model.")
    assert not (tmp_path / "cache").exists(), "nothing may be started before the model is known to be there"


def test_unknown_backend_settings_are_rejected():
    with pytest.raises(GemLightningError, match="not a local rembg model"):
        RembgBackend("atlascloud")
    with pytest.raises(GemLightningError, match="background.fallback"):
        BackgroundRemoval(GrabCutBackend(), fallback="skip")


DEMO_PER_CLASS = 4  # u2netp takes about 0.5 s a photo on one core here
DEMO_IMAGES = 10 * DEMO_PER_CLASS  # the demo set has ten classes


def _prepare_command(tmp_path: Path, *extra: str, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gem_lightning.cli.prepare",
        "data=demo",
        f"data.root={tmp_path / 'gems'}",
        f"data.demo.images_per_class={DEMO_PER_CLASS}",
        "data.demo.image_size=96",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "background=rembg",
        "background.backend.model=u2netp",
        f"background.workers={workers}",
        "background.progress=false",
        *extra,
    ]


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _kill_mid_way(command: list[str], env: dict[str, str], cwd: Path, kill: signal.Signals) -> int:
    """Start ``command``, send ``kill`` to the process the user started (not its workers: they must end with it)
    once it has prepared 5 more images than were cached, check that its workers end and nothing is written
    after; the number of images prepared by then."""
    prepared = cwd / "cache" / "prepared"
    before = len(list(prepared.rglob("*.json")))
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while len(list(prepared.rglob("*.json"))) < before + 5:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no image was prepared within two minutes"
            time.sleep(0.05)
    except AssertionError:
        process.kill()
        raise
    workers = _children(process.pid)
    assert len(workers) >= 2, "no worker processes seen"
    process.send_signal(kill)
    process.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), f"workers outlived their parent ({kill.name})"
    done = len(list(prepared.rglob("*.json")))
    time.sleep(1.0)
    assert len(list(prepared.rglob("*.json"))) == done  # nobody is still writing cut-outs
    assert not [p for p in prepared.rglob("*") if p.name.endswith(".tmp")], "partial files were left behind"
    return done


@needs_shared(U2NET_DIR / "u2netp.onnx")
def test_a_killed_run_ends_its_workers_and_the_rerun_does_only_the_rest_leaving_no_partial_files(tmp_path):
    env = checkout_env(U2NET_HOME=str(U2NET_DIR))
    command = _prepare_command(tmp_path, workers=2)
    # SIGTERM (handled: the run stops its workers) and SIGKILL (not handled: the workers notice their parent
    # died) one after the other, each mid-way; the third run finishes what both left.
    after_sigterm = _kill_mid_way(command, env, tmp_path, signal.SIGTERM)
    done_before = _kill_mid_way(command, env, tmp_path, signal.SIGKILL)
    assert 5 <= after_sigterm < done_before < DEMO_IMAGES, "each kill must land mid-way"

    finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    # The printed report: the per-class table and the closing summary of this (resumed) run.
    assert "Beryl Golden" in finished.stdout and "Quartz Lemon" in finished.stdout
    closing = f"background removal (rembg u2netp): done {DEMO_IMAGES - done_before}, cached {done_before}"
    assert closing in finished.stdout
    report = json.loads(next((tmp_path / "cache" / "reports").rglob("data_report.json")).read_text())
    summary = report["background"]["summary"]
    assert summary["cached"] == done_before and summary["done"] == DEMO_IMAGES - done_before and summary["failed"] == 0
    prepared = tmp_path / "cache" / "prepared"
    assert not [p for p in prepared.rglob("*") if p.name.endswith(".tmp")], "partial files were left behind"
    pngs = list(prepared.rglob("*.png"))
    assert len(pngs) == DEMO_IMAGES
    for png in pngs:
        with Image.open(png) as image:
            image.load()  # a truncated PNG would fail here


def test_the_prepare_command_checks_and_names_a_missing_model(tmp_path):
    env = {**os.environ, "U2NET_HOME": str(tmp_path / "empty")}
    result = subprocess.run(
        _prepare_command(tmp_path, "--check"), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: rembg model file u2netp.onnx not found")
    assert str(tmp_path / "empty") in result.stderr
    assert "Traceback" not in result.stderr


def test_the_console_script_runs_the_same_command(tmp_path):
    result = subprocess.run(
        ["gem-prepare", "--check", "data=demo", f"paths.cache_dir={tmp_path / 'cache'}", "background=grabcut"],
        cwd=tmp_path,
        env=checkout_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ") and "OpenCV GrabCut" in result.stdout


def test_two_concurrent_runs_share_the_work_instead_of_doing_it_twice(tmp_path):
    # Sweep workers or DDP ranks preparing the same data at once: the second waits on the cache lock.
    data = [c for c in _prepare_command(tmp_path) if not c.startswith("background")]
    subprocess.run(  # render the demo set first (no cut-outs), so both runs start on the same files
        data, cwd=tmp_path, env=checkout_env(), capture_output=True, text=True, timeout=120, check=True
    )
    command = [*data, "background=grabcut", "background.workers=1", "background.progress=false"]
    runs = [
        subprocess.Popen(
            command, cwd=tmp_path, env=checkout_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    closing = sorted(line for out, _ in outputs for line in out.splitlines() if "background removal (" in line)
    assert closing[0].startswith(f"background removal (OpenCV GrabCut): done 0, cached {DEMO_IMAGES},")
    assert closing[1].startswith(f"background removal (OpenCV GrabCut): done {DEMO_IMAGES}, cached 0,")


@needs_shared(OTHER_SOURCES_DIR)
def test_framing_the_stone_brings_a_small_stone_to_the_size_of_a_studio_shot(tmp_path, u2net_home):
    # A real table-top photo (960x540) whose tumbled stone fills a few per cent of the frame.
    photo = OTHER_SOURCES_DIR / "tumbled-stones-in-frame" / "Amethyst" / "amethyst_2024_03_17_12_36_49_fr0001.jpg"
    sources = [SourceImage(file_sha256(photo), photo)]
    shares = {}
    for frame in ("whole", "stone"):
        removal = BackgroundRemoval(RembgBackend("u2netp"), max_side=128, frame=frame, workers=1, progress=False)
        records, summary = removal.prepare(sources, tmp_path / "cache")
        record = records[sources[0].sha256]
        assert summary.failed == 0 and record["method"] == "rembg u2netp" and not record["flag"], record
        with Image.open(removal.variant_dir(tmp_path / "cache") / record["file"]) as prepared:
            pixels = np.asarray(prepared)
        shares[frame] = float((pixels.max(axis=2) > 24).mean())
        if frame == "stone":
            assert pixels.shape == (128, 128, 3), "the stone's square, at max_side"
            assert _border_is_black(pixels) > 0.95, "the margin around the stone is background"
    assert shares["whole"] < 0.10, shares
    assert shares["stone"] > 0.35, f"the stone must fill its square: {shares}"
    # Framing is its own cache variant; the whole-frame key is the one it always was.
    whole = BackgroundRemoval(RembgBackend("u2netp"), max_side=128, workers=1, progress=False)
    assert "frame" not in whole.settings() and whole.variant_dir(tmp_path) != BackgroundRemoval(
        RembgBackend("u2netp"), max_side=128, frame="stone", workers=1, progress=False
    ).variant_dir(tmp_path)
