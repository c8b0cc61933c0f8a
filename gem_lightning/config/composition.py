"""Compose the project's Hydra configs outside ``@hydra.main``: train.py's for the prepare command and sweep
trials, and the inference commands' own (``conf/predict.yaml``, ``evaluate.yaml``, ``export.yaml``, ``web.yaml``).
"""

# The prepare command and sweep trials take train.py's overrides, so ``python -m gem_lightning.cli.prepare
# <overrides>`` prepares, and a sweep trial with ``<overrides> <sampled values>`` trains, exactly what
# ``python train.py <overrides>`` would.

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gem_lightning.config.project_folder import PROJECT_ROOT
from gem_lightning.config.schema import register_config_schemas
from gem_lightning.errors import GemLightningError

# The repository's conf/ beside this package (an editable install, as the README sets up).
DEFAULT_CONFIG_DIR = PROJECT_ROOT / "conf"


def compose_config(
    config_name: str,
    overrides: list[str],
    config_dir: Path = DEFAULT_CONFIG_DIR,
    return_hydra_config: bool = False,
) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides`` applied, as Hydra's compose API builds it."""
    config_dir = Path(config_dir)
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise GemLightningError(
            f"no {config_name}.yaml in {config_dir}: pass --config-dir with the project's conf/ folder"
        )
    register_config_schemas()
    GlobalHydra.instance().clear()  # a second command in one process (tests, the web page) starts afresh
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def compose_train_config(config_dir: Path, overrides: list[str]) -> DictConfig:
    """The config train.py would compose for ``overrides`` (without starting a run), Hydra's node included."""
    cfg = compose_config("train", overrides, config_dir, return_hydra_config=True)
    # ${hydra:runtime.output_dir} in conf/paths needs the Hydra config set, as inside a real run.
    HydraConfig.instance().set_config(cfg)
    check_every_key_has_a_value(cfg)
    return cfg


def check_every_key_has_a_value(cfg: DictConfig) -> None:
    """One line naming every key of a train config left at ``???`` (Hydra's own node aside): e.g. a data config of
    the user's own that leaves out keys, whose values only conf/data/gemstones.yaml holds."""
    missing = [key for key in _keys_without_value(OmegaConf.to_container(cfg)) if not key.startswith("hydra.")]
    if missing:
        raise GemLightningError(
            f"{', '.join(missing)}: no value given; set it on the command line or in your config "
            "(conf/data/gemstones.yaml and conf/model/resnet18.yaml give every data and model key a value)"
        )


def _keys_without_value(node: Any, prefix: str = "") -> list[str]:
    # Read unresolved, from a plain container: OmegaConf.missing_keys fails on an interpolation to a missing value.
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    found = []
    for key, value in items:
        dotted = f"{prefix}.{key}" if prefix else str(key)
        found += [dotted] if isinstance(value, str) and value == "???" else _keys_without_value(value, dotted)
    return found
