"""Pretrained weights download into the torch hub cache once, from a real HTTP server on 127.0.0.1.

The server serves a randomly initialised ResNet-18 under a hash-named URL, as torchvision's are named; the
registry's URL for resnet18 points at it. Nothing here needs a network.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import time

import pytest
import torch
from torchvision import models

from gem_lightning.errors import GemLightningError
from gem_lightning.models import backbones
from gem_lightning.models.pretrained_weights import cached_hub_weights
from tests.helpers.configs import TINY_DEMO, compose_config
from tests.helpers.weights_server import silent_server, weights_server
from tests.helpers.workplace import REPO_ROOT, checkout_env


def _served_resnet18(seed: int = 7) -> tuple[str, bytes, torch.Tensor]:
    """(URL path named by its sha256 as torchvision's are, the file's bytes, its conv1 weight)."""
    torch.manual_seed(seed)
    network = models.resnet18()
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    data = buffer.getvalue()
    return f"/models/resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth", data, network.conv1.weight.detach()


@pytest.fixture(scope="module")
def served_resnet18():
    return _served_resnet18()


def _train_with_pretrained_resnet18(workdir):
    from gem_lightning.training.run import train

    # The stem stays as loaded (frozen_stages), so the trained checkpoint shows which weights were loaded.
    overrides = [*TINY_DEMO, "model.pretrained=true", "model.frozen_stages=1", "evaluate=false", "label_audit=none"]
    return train(compose_config(overrides, workdir))


def test_the_first_run_downloads_and_trains_and_the_next_asks_nothing(
    tmp_path, offline_torch_home, monkeypatch, served_resnet18
):
    path, data, conv1 = served_resnet18
    with weights_server({path: data}) as server:
        monkeypatch.setitem(backbones.RESNET_WEIGHTS_URLS, "resnet18", server.url(path))
        first = _train_with_pretrained_resnet18(tmp_path / "first")
        assert server.requests == [path]
        cached = offline_torch_home / "hub" / "checkpoints" / path.rsplit("/", 1)[1]
        assert cached.read_bytes() == data
        state = torch.load(first.best_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        (stem_key,) = [key for key in state if key.endswith("conv1.weight") and "layer" not in key]
        assert torch.equal(state[stem_key], conv1)
        assert first.metrics["test/acc"] > 0.1  # trained: above chance of 10 classes

        second = _train_with_pretrained_resnet18(tmp_path / "second")
        assert server.requests == [path]  # read from the hub cache, not asked again
        assert second.best_checkpoint


def test_processes_that_start_together_download_once(tmp_path, served_resnet18):
    path, data, _ = served_resnet18
    filename = path.rsplit("/", 1)[1]
    home = tmp_path / "torch_home"
    # Sent over 2 s, so all three are waiting for the file while the first one downloads it.
    with weights_server({path: data}, send_seconds=2.0) as server:
        script = (
            "import sys; from gem_lightning.models.pretrained_weights import cached_hub_weights; "
            "print(cached_hub_weights(sys.argv[1], 'resnet18', True).stat().st_size)"
        )
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", script, server.url(path)],
                cwd=REPO_ROOT,
                env=checkout_env(TORCH_HOME=str(home)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert [int(out.strip()) for out, _ in outputs] == [len(data)] * 3
    assert server.requests == [path]
    assert sorted(p.name for p in (home / "hub" / "checkpoints").iterdir()) == [f".{filename}.lock", filename]


def _assert_one_line_and_nothing_left(error: GemLightningError, url: str, home) -> None:
    message = str(error)
    folder = home / "hub" / "checkpoints"
    filename = url.rsplit("/", 1)[1]
    assert "\n" not in message
    assert url in message and f"into {folder} " in message
    assert "model.pretrained=false" in message and "model=efficientnet_lite0" in message
    # Neither the file nor a partial download stays (only the lock file, hidden).
    assert [p.name for p in folder.iterdir()] == [f".{filename}.lock"]


def test_a_download_whose_sha256_does_not_match_its_name_is_refused_and_removed(offline_torch_home):
    path, data, _ = _served_resnet18()
    with weights_server({path: data[:-1000] + bytes(1000)}) as server:
        with pytest.raises(GemLightningError, match="invalid hash value") as caught:
            cached_hub_weights(server.url(path), "resnet18", allow_download=True)
    _assert_one_line_and_nothing_left(caught.value, server.url(path), offline_torch_home)


def test_an_http_error_is_one_line(offline_torch_home):
    with weights_server({}) as server:
        url = server.url("/models/resnet18-f37072fd.pth")
        with pytest.raises(GemLightningError, match="HTTP Error 404") as caught:
            cached_hub_weights(url, "resnet18", allow_download=True)
    _assert_one_line_and_nothing_left(caught.value, url, offline_torch_home)


def test_a_server_that_never_answers_ends_within_the_timeout(offline_torch_home):
    with silent_server() as base_url:
        url = f"{base_url}/models/resnet18-f37072fd.pth"
        started = time.monotonic()
        with pytest.raises(GemLightningError, match="timed out") as caught:
            cached_hub_weights(url, "resnet18", allow_download=True, timeout_s=1.0)
        assert time.monotonic() - started < 10
    _assert_one_line_and_nothing_left(caught.value, url, offline_torch_home)


def test_downloads_are_on_by_default_for_every_resnet(tmp_path):
    for name in ("resnet18", "resnet34", "resnet50"):
        cfg = compose_config([f"model={name}"], tmp_path)
        assert cfg.model.allow_download is True, name


def test_the_reports_recipe_fetches_its_weights_before_any_data_work(tmp_path, offline_torch_home, monkeypatch):
    # experiment=seed_report as README types it: ImageNet ResNet-18, downloaded by the checks train() and
    # sweep.py run before any data is prepared (check_run_settings).
    from gem_lightning.training.run import check_run_settings

    path, data, _ = _served_resnet18(seed=3)
    with weights_server({path: data}) as server:
        monkeypatch.setitem(backbones.RESNET_WEIGHTS_URLS, "resnet18", server.url(path))
        check_run_settings(compose_config(["experiment=seed_report"], tmp_path))
        assert server.requests == [path]
    assert (offline_torch_home / "hub" / "checkpoints" / path.rsplit("/", 1)[1]).read_bytes() == data
    assert not (tmp_path / "cache").exists()  # nothing scanned or prepared
