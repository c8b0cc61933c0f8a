"""``trainer.gpus`` as users type it, and the one-line error when the machine has no GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import ProgressBar

from gem_lightning.errors import GemLightningError
from gem_lightning.training.run import _instantiate_each
from gem_lightning.training.trainer_factory import build_trainer, resolve_devices
from tests.helpers.configs import TINY_DEMO, compose_config
from tests.helpers.workplace import REPO_ROOT

NO_CUDA = not torch.cuda.is_available()


def test_gpus_zero_means_cpu():
    assert resolve_devices({"gpus": 0, "accelerator": "auto", "devices": "auto"}) == {
        "accelerator": "cpu",
        "devices": "auto",
    }


def test_gpus_null_leaves_accelerator_alone():
    assert resolve_devices({"gpus": None, "accelerator": "cpu", "devices": 1}) == {"accelerator": "cpu", "devices": 1}


def test_ddp_cpu_trains_without_synchronised_batchnorm(tmp_path):
    # PyTorch refuses SyncBatchNorm off CUDA ("SyncBatchNorm layers only work with GPU modules").
    cfg = compose_config([*TINY_DEMO, "trainer=ddp_cpu"], tmp_path)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2 and cfg.trainer.sync_batchnorm
    resolved = resolve_devices(cfg.trainer)
    assert resolved["accelerator"] == "cpu" and resolved["sync_batchnorm"] is False
    assert resolve_devices({"accelerator": "auto", "sync_batchnorm": True})["sync_batchnorm"] is (not NO_CUDA)


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-GPU message")
@pytest.mark.parametrize("gpus", [1, -1, "1", "0,1", [0]])
def test_asking_for_a_gpu_without_cuda_is_one_clear_error(gpus):
    with pytest.raises(GemLightningError, match=r"trainer.gpus=.* asks for .* GPU.*trainer.gpus=0"):
        resolve_devices({"gpus": gpus, "accelerator": "auto", "devices": "auto"})


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")
def test_gpus_one_selects_one_gpu():
    assert resolve_devices({"gpus": 1, "accelerator": "auto", "devices": "auto"}) == {
        "accelerator": "gpu",
        "devices": 1,
    }


@pytest.mark.parametrize("gpus", ["two", -2, 1.5, True])
def test_nonsense_gpus_is_refused(gpus):
    with pytest.raises(GemLightningError, match="trainer.gpus"):
        resolve_devices({"gpus": gpus})


def _train_cli(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args, f"paths.root_dir={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(not NO_CUDA, reason="checks the no-GPU message")
def test_cli_trainer_gpus_1_without_cuda_prints_one_line_and_no_traceback(tmp_path):
    result = _train_cli(["model=resnet18", "trainer.gpus=1", *TINY_DEMO], tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "trainer.gpus=1" in errors[0] and "CUDA" in errors[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_unknown_key_fails_with_hydra_message_and_writes_nothing(tmp_path):
    result = _train_cli(["data.batchsize=32"], tmp_path)
    assert result.returncode != 0
    assert "Key 'batchsize' not in 'DataSchema'" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_turning_the_progress_bar_off_drops_the_progress_bar_callback(tmp_path):
    cfg = compose_config(["trainer=cpu", "trainer.enable_progress_bar=false"], tmp_path)
    callbacks = _instantiate_each(cfg.callbacks)
    assert any(isinstance(c, ProgressBar) for c in callbacks)  # the default group brings RichProgressBar
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=False)
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)
