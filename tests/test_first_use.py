"""What a new user runs into: each bad input is one line (or a logged skip), work survives a kill.

Each test reproduces one case found by trying the commands (issue 13): the command or call that showed it,
and the line it now gives.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gem_lightning.data.scan import scan_dataset
from gem_lightning.errors import GemLightningError
from gem_lightning.training.run import check_run_settings, train
from tests.helpers.configs import TINY_DEMO, compose_config
from tests.helpers.train_command import epoch_logged
from tests.helpers.workplace import REPO_ROOT


def _train_py(*overrides: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _one_line(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


# -- last.ckpt after every epoch ----------------------------------------------------------------------------


def test_last_ckpt_is_the_last_epoch_when_validation_never_improves(tmp_path):
    # The command: a learning rate of 1e-30 keeps val/acc at its first value, so no later epoch is
    # "best"; Lightning's save_last=true then left last.ckpt at epoch 0.
    cfg = compose_config([*TINY_DEMO, "trainer.max_epochs=3", "optim.lr=1e-30", "test=false"], tmp_path)
    train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 2
    assert torch.load(checkpoints / "best.ckpt", weights_only=True)["epoch"] == 0


# -- checkpoints given to train.py --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, trained_demo_run) -> dict[Path, str]:
    folder = tmp_path_factory.mktemp("bad_checkpoints")
    empty = folder / "empty.ckpt"
    empty.write_bytes(b"")
    cut = folder / "cut.ckpt"
    cut.write_bytes(trained_demo_run.checkpoint.read_bytes()[:5000])
    noise = folder / "noise.ckpt"
    noise.write_bytes(os.urandom(3000))
    foreign = folder / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    objects = folder / "objects.ckpt"
    torch.save({"model": torch.nn.Linear(2, 2)}, objects)  # a pickled module: not loaded
    return {
        empty: "it is an empty file (0 bytes)",
        cut: "not a PyTorch checkpoint, or cut short (5,000 bytes)",
        noise: "not a PyTorch checkpoint, or cut short (3,000 bytes)",
        foreign: "is not a gem-lightning checkpoint",
        objects: "holds Python objects that gem-lightning checkpoints never contain",
        folder: "is a folder, not a checkpoint file",
        folder / "gone.ckpt": "checkpoint not found",
    }


def test_bad_ckpt_path_is_one_line_before_any_data_work(tmp_path, bad_checkpoints):
    for checkpoint, message in bad_checkpoints.items():
        cfg = compose_config([*TINY_DEMO, f"ckpt_path={checkpoint}"], tmp_path)
        with pytest.raises(GemLightningError) as raised:
            check_run_settings(cfg)
        text = str(raised.value)
        assert message in text and f"ckpt_path={checkpoint}" in text, text
        assert "weights_only=False" not in text and "\n" not in text
    assert not (tmp_path / "cache").exists()  # nothing was prepared


def test_bad_ckpt_path_from_the_command_line(tmp_path, bad_checkpoints):
    empty = next(iter(bad_checkpoints))
    result = _train_py(*TINY_DEMO, f"ckpt_path={empty}", f"paths.root_dir={tmp_path}")
    assert "it is an empty file (0 bytes)" in _one_line(result)
    assert "checking" not in result.stderr  # the scan never started


def test_a_checkpoint_of_other_classes_is_refused(tmp_path, trained_demo_run):
    cfg = compose_config([*TINY_DEMO, "data.demo.num_classes=4", f"ckpt_path={trained_demo_run.checkpoint}"], tmp_path)
    with pytest.raises(GemLightningError, match=r"was trained on 10 other classes than this run's 4: it has 6 the"):
        train(cfg)


# -- optimiser and scheduler settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-1"], "torch.optim.Adam (optim.lr=-1, optim.weight_decay=0.0) refuses its settings: Invalid"),
        (["+optim.lrr=1"], "optim.lrr is not a setting of torch.optim.Adam; its settings are: lr, betas, eps"),
        (["optim=sgd", "optim.momentum=-0.5"], "Invalid momentum value: -0.5"),
        (["scheduler=cosine", "+scheduler.t_max=3"], "scheduler.t_max is not a setting of torch.optim.lr_sched"),
    ],
)
def test_optimiser_settings_are_checked_before_data_work(tmp_path, overrides, message):
    cfg = compose_config([*TINY_DEMO, *overrides], tmp_path)
    with pytest.raises(GemLightningError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_run_settings(cfg)


def test_a_bad_learning_rate_from_the_command_line(tmp_path):
    assert "Invalid learning rate: -1" in _one_line(_train_py(*TINY_DEMO, "optim.lr=-1", f"paths.root_dir={tmp_path}"))


# -- class folders ------------------------------------------------------------------------------------------


def _photos(tmp_path: Path, counts: dict[str, int], trained_demo_run) -> Path:
    source = sorted(Path(trained_demo_run.datamodule.root).glob("*/*.png"))
    root = tmp_path / "photos"
    taken = iter(source)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for _ in range(count):
            photo = next(taken)
            shutil.copy(photo, root / name / photo.name)
    return root


def test_empty_and_tiny_class_folders(tmp_path, trained_demo_run, caplog):
    root = _photos(tmp_path, {"Ruby": 6, "Emerald": 6, "Empty": 0, "Lonely": 2}, trained_demo_run)
    (root / "Ruby" / "readme.txt").write_text("bought in 2024\n")
    scan = scan_dataset(root, tmp_path / "cache", 50_000_000)
    assert not scan.skipped  # readme.txt is not a photo: ignored, not "skipped"
    with caplog.at_level(logging.WARNING):
        kept = scan.classes_with_images()
    assert kept.class_names == ("Emerald", "Lonely", "Ruby")
    assert "left out 1 class folder(s) with no usable image under" in caplog.text and "Empty (0)" in caplog.text
    assert "1 class(es) have too few images for one in each of train, validation and test: Lonely (2)" in caplog.text
    assert scan.classes_with_images(min_images=3).class_names == ("Emerald", "Ruby")


def test_one_class_folder_is_one_line_at_scan_time(tmp_path, trained_demo_run):
    root = _photos(tmp_path, {"Ruby": 4}, trained_demo_run)
    result = _train_py(*TINY_DEMO, f"data.root={root}", "data.demo=null", f"paths.root_dir={tmp_path}")
    assert "need at least 2 class folders in" in _one_line(result) and "found only 'Ruby'" in result.stderr


# -- the cache folder ---------------------------------------------------------------------------------------


def test_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = _train_py(*TINY_DEMO, f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path}/a_file/cache")
    line = _one_line(result)
    assert f"cannot make the folder {tmp_path}/a_file/cache" in line and "paths.cache_dir=" in line


def _can_mount_read_only() -> bool:
    return shutil.which("unshare") is not None and os.geteuid() == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="needs root and unshare to mount a folder read-only")
def test_a_complete_read_only_cache_still_serves_training(tmp_path):
    cache = tmp_path / "cache"
    overrides = [*TINY_DEMO, f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache}"]
    assert _train_py(*overrides).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    # Root ignores permission bits, so the cache is mounted read-only in a mount namespace of its own.
    command = " ".join([sys.executable, "train.py", *(f"'{o}'" for o in overrides)])
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind {cache} {cache} && mount -o remount,ro,bind {cache} && {command}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"the cache folder {cache} is read-only" in result.stdout + result.stderr
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == before


# -- a killed train.py resumed into its own folder ----------------------------------------------------------


def test_a_killed_run_resumed_into_its_own_folder_with_hydra_run_dir(tmp_path):
    run_dir = tmp_path / "outputs" / "demo" / "runs" / "kept"
    lean = ["evaluate=false", "label_audit=none"]  # only the epochs and the folder are checked here
    overrides = [*TINY_DEMO, "trainer.max_epochs=4", *lean, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}"]
    killed = subprocess.Popen(
        [sys.executable, "train.py", *overrides], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        # The checkpoint (130 MB) is read only once train.log says the second epoch ended.
        logged = epoch_logged(run_dir / "train.log", 2)
        if logged and last.is_file() and torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.1)
    killed.kill()
    killed.wait()
    killed_state = torch.load(last, map_location="cpu", weights_only=True)
    assert killed_state["epoch"] <= 2, "the run ended before it could be killed"

    result = _train_py(*overrides, f"ckpt_path={last}")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 3

    # Same folder: the best-checkpoint callback kept its best score (Lightning restores it only there).
    def best_score(checkpoint):
        (state,) = [
            v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor': 'val/acc'")
        ]
        return float(state["best_model_score"])

    assert best_score(resumed) >= best_score(killed_state)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # One folder, one set of curves: the killed epochs and the resumed ones, each epoch once.
    epochs = []
    for events_file in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        events = EventAccumulator(str(events_file))
        events.Reload()
        if "val/acc" in events.Tags()["scalars"]:
            epochs += [
                round(e.value) for e in events.Scalars("epoch") if e.step in {v.step for v in events.Scalars("val/acc")}
            ]
    assert sorted(set(epochs)) == [0, 1, 2, 3]
