"""The fixtures every test folder shares: a quiet Hydra, an offline torch hub, trained tiny demo runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Under pytest-xdist (pyproject's addopts: two test processes on this 2-core machine) each test process, and what
# it starts, computes on one thread: two processes of two OpenMP threads each spin against each other on two
# cores. Set before torch is imported, which sizes its thread pool once.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from gem_lightning.config.schema import register_config_schemas
from tests.helpers.configs import TINY_DEMO, compose_config
from tests.helpers.readme_commands import Clone, fresh_clone
from tests.helpers.scratch_folders import fixture_folder
from tests.helpers.workplace import U2NET_DIR

register_config_schemas()

# Under CI a skip fails the run, but for tests marked cuda; the run ends with the tests that used the most CPU.
pytest_plugins = ["tests.helpers.ci_skips", "tests.helpers.cpu_time"]


@pytest.fixture(autouse=True)
def _quiet_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def offline_torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache, so no test reads (or writes) the user's own."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@dataclass(frozen=True)
class TrainedRun:
    """A finished tiny demo run (train.py's train(), evaluation included), shared by the inference tests."""

    workdir: Path
    run_dir: Path
    checkpoint: Path  # the best checkpoint, calibrated by the run
    class_names: tuple[str, ...]
    metrics: dict
    datamodule: object  # the run's GemDataModule, its split and prepared files
    cache_dir: Path  # the run's paths.cache_dir


@pytest.fixture(scope="session")
def trained_demo_run(request, tmp_path_factory) -> Iterator[TrainedRun]:
    from gem_lightning.training.run import train

    with fixture_folder(request, tmp_path_factory, "trained_demo") as workdir:
        # Two epochs on 16 images per class: good enough to be better than chance, bad enough to make mistakes.
        overrides = [*TINY_DEMO, "data.demo.images_per_class=16", "trainer.max_epochs=2"]
        cfg = compose_config(overrides, workdir)
        result = train(cfg)
        metrics = result.metrics
        GlobalHydra.instance().clear()
        checkpoint = Path(result.best_checkpoint)
        datamodule = result.datamodule
        yield TrainedRun(
            workdir,
            workdir / "run",
            checkpoint,
            tuple(datamodule.class_names),
            metrics,
            datamodule,
            Path(cfg.paths.cache_dir),
        )


def _cache_shared_by_workers(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A cache folder every xdist worker of this session finds (this session's base temp without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / f"shared-cache-{name}"


@pytest.fixture(scope="session")
def trained_rembg_run(request, tmp_path_factory) -> Iterator[TrainedRun]:
    """A tiny demo run trained on rembg u2netp cut-outs (needs ../shared); U2NET_HOME stays set for its users."""
    from gem_lightning.training.run import train

    if not (U2NET_DIR / "u2netp.onnx").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{U2NET_DIR / 'u2netp.onnx'} is missing: CI must have ../shared")
        pytest.skip(f"{U2NET_DIR / 'u2netp.onnx'} is absent: needs the real rembg model in ../shared")
    with fixture_folder(request, tmp_path_factory, "trained_rembg") as workdir, pytest.MonkeyPatch.context() as patch:
        patch.setenv("U2NET_HOME", str(U2NET_DIR))
        # 6 photos a class, 60 cut-outs: u2netp takes about 0.5 s a photo on one core here.
        cut_outs = ["background=rembg", "background.backend.model=u2netp", "background.progress=false"]
        overrides = [*TINY_DEMO, "data.demo.images_per_class=6", *cut_outs]
        # Its cache is the one folder both xdist workers use (each builds this fixture): the second finds the
        # first's cut-outs, as a user's second run does (the cache is safe for concurrent runs).
        cache_dir = _cache_shared_by_workers(tmp_path_factory, "rembg")
        cfg = compose_config(overrides, workdir, cache_dir=cache_dir)
        result = train(cfg)
        metrics = result.metrics
        GlobalHydra.instance().clear()
        datamodule = result.datamodule
        yield TrainedRun(
            workdir,
            workdir / "run",
            Path(result.best_checkpoint),
            tuple(datamodule.class_names),
            metrics,
            datamodule,
            cache_dir,
        )


@pytest.fixture(scope="module")
def clone(request, tmp_path_factory) -> Iterator[Clone]:
    """A fresh clone of this working tree for one README-commands module (each module gets its own)."""
    with fixture_folder(request, tmp_path_factory, "fresh") as folder:
        yield fresh_clone(folder)


@pytest.fixture(scope="module")
def small_demo_clone(request, tmp_path_factory) -> Iterator[Clone]:
    """A second fresh clone, for the tests that render the demo set smaller (``SMALL_DEMO``): the first clone's
    ``cache/demo_gems`` keeps README's 60 photos a class whatever order the tests run in."""
    with fixture_folder(request, tmp_path_factory, "fresh_small_demo") as folder:
        yield fresh_clone(folder)
