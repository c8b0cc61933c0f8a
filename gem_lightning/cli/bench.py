"""``gem-bench`` (or ``python -m gem_lightning.cli.bench``): time our pipeline beside the report's plain one.

What is measured and how: ``gem_lightning.bench.suite``.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from gem_lightning.cli.front_end import run_command


def run(cfg: DictConfig) -> int:
    # Imported once running: a worker this spawns runs this module again (tests/machine/test_spawned_workers.py).
    from gem_lightning.bench.suite import run_bench

    run_bench(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    description = "Time the data loader, training, evaluation and head-only epochs: ours beside the plain pipeline."
    return run_command("bench", description, run, argv)


if __name__ == "__main__":
    sys.exit(main())
