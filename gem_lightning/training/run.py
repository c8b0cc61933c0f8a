"""``train(cfg)``: everything ``train.py`` does, callable from tests and sweeps with a composed config."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from gem_lightning.choices import plain_value
from gem_lightning.config.composition import check_every_key_has_a_value
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.report import CONTACT_SHEET_NAME, REPORT_NAME
from gem_lightning.errors import GemLightningError
from gem_lightning.evaluation.checkpoint_evaluation import evaluate_checkpoint, split_parts
from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.files.shown_paths import shown_path
from gem_lightning.inference.predictor import Predictor
from gem_lightning.machine.child_processes import die_with_parent
from gem_lightning.models.backbones import pretrained_weights_file
from gem_lightning.models.checkpoint_format import CHECKPOINT_KEY, read_checkpoint
from gem_lightning.models.classifier import GemClassifier
from gem_lightning.training.label_audit import SHEET_NAME as LABEL_ISSUE_SHEET
from gem_lightning.training.label_audit import describe as describe_label_audit
from gem_lightning.training.label_audit import run_label_audit
from gem_lightning.training.multirun_summary import METRICS_FILE
from gem_lightning.training.optimiser_settings import check_optimiser_settings
from gem_lightning.training.trainer_factory import build_trainer, resolve_devices

log = logging.getLogger(__name__)


def _instantiate_each(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a group like ``callbacks`` or ``logger`` that has a ``_target_``."""
    if not group:
        return []
    return [
        hydra.utils.instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node
    ]


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _log_hyperparameters(loggers: list[Logger], run_config: dict, metric: str) -> None:
    settings = {k: v for k, v in run_config.items() if k != "paths"}
    if isinstance(settings.get("taxonomy"), dict):
        # Its class entries are a table of facts, not settings to compare runs by; its name and rule stay.
        settings["taxonomy"] = {k: v for k, v in settings["taxonomy"].items() if k != "classes"}
    params = _flatten(settings)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # Registering the metric makes TensorBoard's HParams view show it beside the parameters.
            logger.log_hyperparams(params, metrics={metric: 0.0})
        else:
            logger.log_hyperparams(params)


def _print_summary(output_dir: Path, best_checkpoint: str, best_note: str, metrics: dict[str, float]) -> None:
    table = Table(title="gem-lightning run", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in sorted(metrics):
        table.add_row(name, f"{metrics[name]:.4f}")
    Console().print(table)
    # Plain prints: rich would wrap long paths at the terminal width and break copy-paste.
    print(f"run dir: {shown_path(output_dir)}")
    print(f"best checkpoint: {shown_path(best_checkpoint) + best_note if best_checkpoint else '(none saved)'}")


def check_run_settings(cfg: DictConfig) -> dict | None:
    """What can be checked in seconds, checked before minutes of data preparation; returns the checkpoint to
    resume from (read), if any. train() and sweep.py (before its study records a trial) call it.

    A key without a value, a GPU the machine lacks, the checkpoint to resume, the optimiser and scheduler
    settings, and the pretrained weights file.
    """
    check_every_key_has_a_value(cfg)
    resolve_devices(cfg.trainer)
    ckpt_path = cfg.get("ckpt_path")
    resumed = read_checkpoint(ckpt_path, setting="ckpt_path") if ckpt_path else None
    check_optimiser_settings(cfg.optim, cfg.get("scheduler"))
    if cfg.model.get("pretrained"):
        pretrained_weights_file(plain_value(cfg.model.backbone), bool(cfg.model.get("allow_download")))
    return resumed


def _check_resumable(checkpoint: dict, ckpt_path: str, class_names: Sequence[str]) -> None:
    """A checkpoint resumes only a run on the same classes, and only with Lightning's training state in it."""
    trained_on = list(checkpoint[CHECKPOINT_KEY].get("class_names", []))
    if trained_on != list(class_names):
        missing = sorted(set(class_names) - set(trained_on))
        extra = sorted(set(trained_on) - set(class_names))
        detail = (
            "; ".join(
                part
                for part in (
                    f"the data has {len(missing)} class(es) it lacks ({', '.join(missing[:5])})" if missing else "",
                    f"it has {len(extra)} the data lacks ({', '.join(extra[:5])})" if extra else "",
                )
                if part
            )
            or "the same classes in another order"
        )
        raise GemLightningError(
            f"ckpt_path={ckpt_path} was trained on {len(trained_on)} other classes than this run's "
            f"{len(class_names)}: {detail}. Resume with the overrides of the run that wrote it."
        )
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise GemLightningError(
            f"ckpt_path={ckpt_path} holds weights but no training state (optimiser, loops) to resume from: "
            "give the run's checkpoints/last.ckpt"
        )


def _best_epoch_note(trainer: pl.Trainer) -> str:
    """`` (epoch 3, val/acc 1.0000)``: what best.ckpt holds, which its name no longer says."""
    callback = trainer.checkpoint_callback
    if callback is None or callback.best_model_score is None or not callback.best_model_path:
        return ""
    epoch = torch.load(callback.best_model_path, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    return f" (epoch {epoch}, {callback.monitor} {float(callback.best_model_score):.4f})"


@dataclass(frozen=True)
class TrainingResult:
    """What a run produced: its metrics and best checkpoint, and the objects it built for callers that look
    inside (tests, sweep trials)."""

    metrics: dict[str, float]
    best_checkpoint: str  # "" when none was saved
    report: Path | None  # the evaluation report, when the run wrote one
    datamodule: GemDataModule
    model: GemClassifier
    trainer: pl.Trainer


def train(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> TrainingResult:
    """Fit, test and evaluate as ``cfg`` says, and record the run in its folder.

    ``extra_callbacks`` join the configured ones: a sweep trial's pruning callback holds its Optuna trial,
    which no config can express.
    """
    started = time.perf_counter()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    resumed = check_run_settings(cfg)
    callbacks = [*_instantiate_each(cfg.get("callbacks")), *extra_callbacks]
    loggers = _instantiate_each(cfg.get("logger"))
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.local_rank > 0:
        # A data-parallel process started by another (Lightning's launcher, torchrun) ends with it, even where
        # it is not yet inside a collective that would fail when its peer is gone.
        die_with_parent()
    datamodule = _prepare_data(cfg, resumed)
    model = _build_model(cfg, datamodule, loggers)
    output_dir = Path(cfg.paths.output_dir)
    audit = None
    if cfg.get("label_audit") and trainer.is_global_zero and datamodule.prepared is not None:
        # Before fit: the backbone as pretrained, on the device the run trains on (fit moves the model itself).
        audit = run_label_audit(model.to(trainer.strategy.root_device), datamodule, cfg.label_audit)
        model.cpu()
        log.info(describe_label_audit(audit[0]))

    if trainer.world_size > 1 and trainer.is_global_zero:
        log.info(
            "data parallel: %d processes x data.batch_size %d = %d images a step; optim.lr %g as given, not scaled",
            trainer.world_size,
            cfg.data.batch_size,
            trainer.world_size * cfg.data.batch_size,
            cfg.optim.lr,
        )
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if trainer.is_global_zero:
        _keep_split_and_data_report(datamodule, output_dir, audit)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best_checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test", True):
        metrics.update(_test(trainer, model, datamodule, best_checkpoint))
    report = None
    if cfg.get("evaluate", False) and cfg.get("test", True) and best_checkpoint and trainer.is_global_zero:
        calibration_metrics, report = _calibrate_and_report(cfg, best_checkpoint, datamodule, output_dir)
        metrics.update(calibration_metrics)
        for logger in loggers:  # beside test/ in TensorBoard, so runs compare on calibration too
            logger.log_metrics(calibration_metrics, step=trainer.global_step)
            logger.save()

    if trainer.is_global_zero:
        _print_summary(output_dir, best_checkpoint, _best_epoch_note(trainer), metrics)
        if report is not None:
            print(f"evaluation report: {shown_path(report)}")
        _record_run(output_dir, metrics, trainer.current_epoch, time.perf_counter() - started, best_checkpoint)
    return TrainingResult(metrics, best_checkpoint, report, datamodule, model, trainer)


def _prepare_data(cfg: DictConfig, resumed: dict | None) -> GemDataModule:
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()  # the class list depends on the folder (or the rendered demo set)
    if resumed is not None:
        _check_resumable(resumed, cfg.ckpt_path, datamodule.class_names)
    return datamodule


def _build_model(cfg: DictConfig, datamodule: GemDataModule, loggers: list[Logger]) -> GemClassifier:
    """The model for the data's classes, carrying the run's whole config into every checkpoint."""
    # Hydra's own node is only present when composed for tests; the run's settings are the rest.
    settings = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    run_config = OmegaConf.to_container(settings, resolve=True, enum_to_str=True)
    model = hydra.utils.instantiate(cfg.model, class_names=list(datamodule.class_names))
    model.run_config = run_config
    _log_hyperparameters(loggers, run_config, cfg.optimized_metric)
    return model


def _keep_split_and_data_report(
    datamodule: GemDataModule, output_dir: Path, audit: tuple[dict, Path | None] | None
) -> None:
    """Copy the split manifest and the data report beside the run, to audit it after the cache is cleared; the
    run's report carries its label audit (``audit``: the section and its thumbnail sheet) when there is one."""
    if datamodule.prepared is None:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(datamodule.prepared.manifest_file, output_dir / "split_manifest.csv")
    report_dir = datamodule.prepared.report_file.parent
    shutil.copyfile(report_dir / CONTACT_SHEET_NAME, output_dir / CONTACT_SHEET_NAME)
    report = json.loads((report_dir / REPORT_NAME).read_text())
    if audit is not None:
        section, sheet = audit
        report["label_issues"] = {**section, "sheet": LABEL_ISSUE_SHEET if sheet else None}
        if sheet is not None:
            shutil.copyfile(sheet, output_dir / LABEL_ISSUE_SHEET)
    write_text_atomically(output_dir / REPORT_NAME, json.dumps(report, indent=1))


def _test(trainer: pl.Trainer, model: GemClassifier, datamodule: GemDataModule, best_checkpoint: str) -> dict:
    if not best_checkpoint:
        log.warning("no best checkpoint was saved (fast_dev_run?); testing the current weights")
    trainer.test(model, datamodule=datamodule, ckpt_path=best_checkpoint or None)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test")}


def _calibrate_and_report(
    cfg: DictConfig, best_checkpoint: str, datamodule: GemDataModule, output_dir: Path
) -> tuple[dict[str, float], Path]:
    """Calibrate the best checkpoint on the validation split (stored in it) and write the test report; with
    ``data.extra_roots``, one more report for each source's part of the test split (``test-<source>/``)."""
    predictor = Predictor(best_checkpoint, cache_dir=cfg.paths.cache_dir, batch_size=cfg.data.batch_size)
    evaluation = evaluate_checkpoint(
        predictor,
        output_dir=output_dir / "evaluation" / "test",
        datamodule=datamodule,
        answer_config=cfg,
    )
    for source in split_parts(datamodule):
        part = evaluate_checkpoint(
            predictor,
            calibrate_first=False,
            output_dir=output_dir / "evaluation" / f"test-{source}",
            datamodule=datamodule,
            split_source=source,
            answer_config=cfg,
        )
        figures = part.evaluation.summary
        leak_free = f", leak-free {figures['top1_leak_free']:.4f}" if "top1_leak_free" in figures else ""
        log.info(
            "test photos of %s: %d, top-1 %.4f%s, mean recall %.4f; report %s",
            source,
            int(figures["images"]),
            figures["top1"],
            leak_free,
            figures["recall_mean"],
            part.report,
        )
    # On the test split, held out from the fit: test/loss is the NLL before, these are the rest.
    summary = evaluation.evaluation.summary
    calibration_metrics = {
        "test/ece": summary["ece_before"],
        "test/ece_calibrated": summary["ece_after"],
        "test/nll_calibrated": summary["nll_after"],
        "calibration/temperature": evaluation.evaluation.temperature,
    }
    return calibration_metrics, evaluation.report


def _record_run(output_dir: Path, metrics: dict, epochs: int, seconds: float, best_checkpoint: str) -> None:
    """metrics.json: what a multirun summary (gem_lightning.training.multirun_summary) reads back for this job."""
    result = {"metrics": metrics, "epochs": epochs, "seconds": seconds, "best_checkpoint": best_checkpoint}
    write_text_atomically(output_dir / METRICS_FILE, json.dumps(result, indent=1))
