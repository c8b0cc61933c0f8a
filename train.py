"""Train a gemstone classifier: ``python train.py model=resnet18 trainer.gpus=1`` (see README.md)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gem_lightning.cli.library_noise import silence_library_noise
from gem_lightning.config.schema import register_config_schemas
from gem_lightning.errors import exit_status_for, find_user_error
from gem_lightning.machine.garbage_collector import freeze_imported_objects
from gem_lightning.machine.memory_allocator import keep_freed_memory
from gem_lightning.training.multirun_summary import record_failed_job

# Reuse freed CPU memory instead of page-faulting it afresh every step (machine/memory_allocator.py says why).
keep_freed_memory()
silence_library_noise()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Imported here, not above: a worker process this run spawns (rembg cut-outs) runs this file again as
    # __mp_main__, and would otherwise import Lightning and torch first (tests/machine/test_spawned_workers.py).
    from gem_lightning.training.run import train

    freeze_imported_objects()  # its imports stay out of every collection (machine/garbage_collector.py says why)
    try:
        metrics = train(cfg).metrics
    except Exception as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One failed job must not end the others: record it; the multirun summary lists it and exits 1.
            record_failed_job(Path(cfg.paths.output_dir), error, find_user_error(error))
            return None
        # One line the user can act on (exit 2); a bug is raised again with its traceback.
        sys.exit(exit_status_for(error))
    # Hydra hands this to a sweeper (and sweep.py reads the same key) as the objective.
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    register_config_schemas()  # before Hydra composes the config; it reads the data module's signature
    main()
