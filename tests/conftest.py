"""Shared test helpers: compose the real Hydra config and shrink it, and find ../shared."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from gem_lightning.config.composition import compose_train_config
from gem_lightning.config.schema import register_config_schemas

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"
SHARED_DIR = REPO_ROOT.parent / "shared"
GEMSTONES_DIR = SHARED_DIR / "data" / "gemstones"
IMAGENET_SAMPLES_DIR = SHARED_DIR / "data" / "imagenet-samples"

register_config_schemas()

# A demo run small enough for a 2-core CPU: 10 classes x 12 images of 48 px, trained at 32 px.
TINY_DEMO = [
    "experiment=demo",
    "data.demo.images_per_class=12",
    "data.demo.image_size=48",
    "data.image_size=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.rich_progress_bar",
]


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess started outside the repository: it imports this checkout's package,
    not whichever copy is installed."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def needs_shared(path: Path):
    """Skip (with the reason) when ../shared is not beside the clone, as in a user's checkout.

    Under CI (CI=true) nothing is skipped: there ../shared must exist, and its absence must fail loudly.
    """
    return pytest.mark.skipif(
        not path.exists() and not os.environ.get("CI"),
        reason=f"{path} is absent: these tests need the real data/weights in ../shared (present in CI)",
    )


def compose_config(overrides: list[str], workdir: Path) -> DictConfig:
    """The config train.py would get for ``overrides``, with every path inside ``workdir``."""
    paths = [
        f"paths.root_dir={workdir}",
        f"paths.output_dir={workdir / 'run'}",
        f"paths.cache_dir={workdir / 'cache'}",
        f"paths.log_dir={workdir / 'outputs'}",
    ]
    return compose_train_config(CONFIG_DIR, [*overrides, *paths])


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


@pytest.fixture(scope="session")
def trained_demo_run(tmp_path_factory) -> TrainedRun:
    from gem_lightning.training.run import train

    workdir = tmp_path_factory.mktemp("trained_demo")
    # Two epochs on 16 images per class: good enough to be better than chance, bad enough to make mistakes.
    overrides = [*TINY_DEMO, "data.demo.images_per_class=16", "trainer.max_epochs=2"]
    cfg = compose_config(overrides, workdir)
    result = train(cfg)
    metrics = result.metrics
    GlobalHydra.instance().clear()
    checkpoint = Path(result.best_checkpoint)
    datamodule = result.datamodule
    return TrainedRun(workdir, workdir / "run", checkpoint, tuple(datamodule.class_names), metrics, datamodule)


U2NET_DIR = SHARED_DIR / "models" / "u2net"


@pytest.fixture(scope="session")
def trained_rembg_run(tmp_path_factory) -> Iterator[TrainedRun]:
    """A tiny demo run trained on rembg u2netp cut-outs (needs ../shared); U2NET_HOME stays set for its users."""
    from gem_lightning.training.run import train

    if not (U2NET_DIR / "u2netp.onnx").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{U2NET_DIR / 'u2netp.onnx'} is missing: CI must have ../shared")
        pytest.skip(f"{U2NET_DIR / 'u2netp.onnx'} is absent: needs the real rembg model in ../shared")
    workdir = tmp_path_factory.mktemp("trained_rembg")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("U2NET_HOME", str(U2NET_DIR))
        overrides = [*TINY_DEMO, "background=rembg", "background.backend.model=u2netp", "background.progress=false"]
        cfg = compose_config(overrides, workdir)
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
        )
