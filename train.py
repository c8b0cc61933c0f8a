"""Train a gemstone classifier: ``python train.py model=resnet18 trainer.gpus=1`` (see README.md)."""

import sys

import hydra
from omegaconf import DictConfig

from gem_lightning.config_schema import register_config_schemas
from gem_lightning.errors import find_user_error
from gem_lightning.memory_allocator import keep_freed_memory
from gem_lightning.training import train

register_config_schemas()
# Reuse freed CPU memory instead of page-faulting it afresh every step (gem_lightning.memory_allocator says why).
keep_freed_memory()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        # One line the user can act on; a traceback would only bury it.
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
    # Hydra hands this to a sweeper (and sweep.py reads the same key) as the objective.
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
