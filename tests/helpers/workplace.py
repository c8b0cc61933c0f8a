"""Where the checkout and ../shared are, and how a test runs a command against this checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "conf"
SHARED_DIR = REPO_ROOT.parent / "shared"
GEMSTONES_DIR = SHARED_DIR / "data" / "gemstones"
IMAGENET_SAMPLES_DIR = SHARED_DIR / "data" / "imagenet-samples"
U2NET_DIR = SHARED_DIR / "models" / "u2net"
OTHER_SOURCES_DIR = SHARED_DIR / "data" / "other-sources"
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"


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
