"""Calibrate a checkpoint and evaluate it on a labelled split or folder, into one report folder."""

# ``calibrate_checkpoint`` fits the temperature on the validation split of the checkpoint's own run (its data
# module rebuilt from the config stored in it) and stores it; ``evaluate_checkpoint`` evaluates the run's test or
# validation split, a labelled folder, or a shifted copy of the test split, and writes the report. The
# ``evaluate`` command and ``train.py`` (for its best checkpoint) both use it.

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from gem_lightning.choices import checked_choice
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.image_dataset import GemImageDataset
from gem_lightning.data.scan import scan_dataset
from gem_lightning.data.shifted_photos import build_shifted_folder, shift_named
from gem_lightning.errors import GemLightningError
from gem_lightning.evaluation.calibration import CalibrationResult, calibrate, store_calibration
from gem_lightning.evaluation.metrics import Evaluation, evaluate_logits
from gem_lightning.evaluation.report import write_evaluation_report
from gem_lightning.inference.backbone_features import prepared_image_features
from gem_lightning.inference.logits import collect_logits
from gem_lightning.inference.member_inputs import MemberInputs
from gem_lightning.inference.predictor import Predictor
from gem_lightning.models.classifier import GemClassifier
from gem_lightning.trust.answers import answering_for
from gem_lightning.trust.nearest_photos import TrainingPhotos
from gem_lightning.trust.novelty import fit_novelty
from gem_lightning.trust.prediction_sets import fit_prediction_sets
from gem_lightning.trust.selective_answers import fit_selective_answers

log = logging.getLogger(__name__)

SPLITS = ("test", "val")


@dataclass(frozen=True)
class EvaluationRun:
    report: Path
    evaluation: Evaluation
    calibration: CalibrationResult | None


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` -> ``<run>``)."""
    checkpoint = Path(checkpoint).resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def datamodule_of(model: GemClassifier, checkpoint: Path) -> GemDataModule:
    """The checkpoint's training data module, rebuilt from the composed config stored in the checkpoint."""
    settings = (model.run_config or {}).get("data")
    if not settings:
        raise GemLightningError(
            f"{checkpoint} holds no training config, so its validation and test splits are unknown; "
            "evaluate a labelled folder with input=<folder> calibrate=false"
        )
    datamodule = hydra.utils.instantiate(OmegaConf.create(settings))
    datamodule.prepare_data()
    datamodule.setup()
    if list(datamodule.class_names) != model.class_names:
        raise GemLightningError(
            f"the classes under {datamodule.root} are no longer those {checkpoint} was trained on; "
            "evaluate a labelled folder with input=<folder> instead"
        )
    return datamodule


def calibrate_checkpoint(
    model: GemClassifier, checkpoint: Path, datamodule: GemDataModule, options: dict, set_settings: Mapping
) -> CalibrationResult:
    """Fit ``model``'s temperature on its run's validation split (one view: a property of the checkpoint, which
    test-time views and ensembles then average), then the prediction sets on the calibrated probabilities
    (``set_settings``: the ``prediction_sets`` config node), and from the backbone features of the training and
    validation photos the novelty rule and the training photos to show; store them in the checkpoint and the model."""
    if model.source_prototypes is not None:
        raise GemLightningError(
            f"{checkpoint} is adapted to {Path(model.source_prototypes['source']).name}: its temperature, sets and "
            "rules were fitted on that source's photos, and calibrating would refit them on the run's validation "
            "split; evaluate it with calibrate=false"
        )
    validation = collect_logits(model, datamodule.datasets["val"], description="validation logits", **options)
    calibration = calibrate(validation.outputs, validation.targets, split="val")
    calibrated = (validation.outputs / calibration.temperature).softmax(-1)
    prediction_sets = fit_prediction_sets(
        calibrated,
        validation.targets,
        score=set_settings["score"],
        penalty=set_settings["penalty"],
        free_ranks=set_settings["free_ranks"],
        split="val",
    )
    training = datamodule.datasets["train"]
    # The training photos as validation sees them (no augmentation), from the cached pass head-only runs share.
    features = prepared_image_features(model, datamodule)[training.rows]
    labels = torch.tensor([label for _, label in training.items])
    photos = [datamodule.prepared.items[row].photo for row in training.rows]
    fitted_after = {
        "prediction_sets": prediction_sets.as_dict(),
        "selective_answers": fit_selective_answers(calibrated, validation.targets, split="val").as_dict(),
        "novelty": fit_novelty(features, labels, validation.features, len(model.class_names), split="val").as_dict(),
        "training_photos": TrainingPhotos.of(features, labels, photos, datamodule.root).as_dict(),
    }
    store_calibration(checkpoint, calibration, fitted_after)
    model.temperature.fill_(calibration.temperature)
    for name, fit in fitted_after.items():
        setattr(model, name, fit)
    log.info(
        "temperature %.3f fitted on %d validation images (NLL %.4f -> %.4f, ECE %.4f -> %.4f), stored in %s",
        calibration.temperature,
        calibration.images,
        calibration.nll_before,
        calibration.nll_after,
        calibration.ece_before,
        calibration.ece_after,
        checkpoint,
    )
    return calibration


def labelled_folder(
    predictor: Predictor, folder: Path, cache_dir: Path
) -> tuple[list[GemImageDataset], list[str], list[Path]]:
    """The usable images of ``<folder>/<class>/`` (classes the checkpoint knows), each member's dataset of them
    (``Predictor.member_datasets``: prepared as its run did), each image's name inside the folder, and the
    photos themselves."""
    scan = scan_dataset(folder, cache_dir, predictor.max_image_pixels)
    scan.log_skipped()
    unknown = sorted(set(scan.class_names) - set(predictor.class_names))
    if unknown:
        raise GemLightningError(
            f"input={folder} has class folders the checkpoint does not know: {', '.join(unknown)}. "
            f"Its classes are: {', '.join(predictor.class_names)}"
        )
    files = [scan.root / item.path for item in scan.usable]
    label_of = {scan.root / item.path: predictor.class_names.index(item.label) for item in scan.usable}
    # The scan has checked every file and hashed it already.
    inputs = predictor.model_inputs(files, [item.sha256 for item in scan.usable])
    for item in inputs.skipped:
        log.warning("skipped %s: %s", item.source, item.reason)
    if not inputs.photos:
        raise GemLightningError(f"input={folder}: no usable image to evaluate")
    datasets = predictor.member_datasets(inputs, [label_of[photo] for photo in inputs.photos])
    return datasets, [str(photo.relative_to(scan.root)) for photo in inputs.photos], inputs.photos


def split_datasets(
    predictor: Predictor, datamodule: GemDataModule, split: str, source: str | None = None
) -> tuple[list[GemImageDataset], list[str], list[Path]]:
    """A run's ``split`` for each member, as ``labelled_folder`` gives a folder: the data module's own dataset
    (its cached squares) for members that prepare photos as its run did, at its size; members that prepare
    them another way get their own files of the same photos, which every member must be able to use.
    ``source``: only the photos of that source (``split_sources``) of a run with ``data.extra_roots``."""
    dataset = datamodule.datasets[split]
    # setup() builds each split's dataset from the data module's items in order, so they line up.
    chosen = [item for item in datamodule.prepared.items if item.split == split]
    if source is not None:
        kept = [index for index, item in enumerate(chosen) if item.from_source == source]
        dataset, chosen = dataset.subset(kept), [chosen[index] for index in kept]
    if not dataset.items:
        part = f" photos of {source}" if source is not None else ""
        raise GemLightningError(f"the {split} split of {datamodule.root} has no{part}: nothing to evaluate")
    sources, photos = [item.source for item in chosen], [item.photo for item in chosen]
    if len(predictor.preparation_ways) == 1:  # every member decodes the run's own files
        inputs = MemberInputs(photos, [[path for path, _ in dataset.items]] * len(predictor.models), [])
    else:
        hashes = {item.path: item.sha256 for item in datamodule.prepared.scan.usable}
        inputs = predictor.model_inputs(photos, [hashes[source] for source in sources])
        if inputs.skipped:  # the run used them; a member trained another way cannot
            skipped = inputs.skipped[0]
            raise GemLightningError(f"ckpt: a member cannot use {skipped.source} ({skipped.reason})")
    labels = [label for _, label in dataset.items]
    return predictor.member_datasets(inputs, labels, dataset.leaked, first=dataset), sources, photos


def split_sources(datamodule: GemDataModule) -> tuple[str, ...]:
    """The sources a run's splits hold photos of: its data root's folder name, then each of ``data.extra_roots``."""
    return datamodule.prepared.scan.sources


def split_parts(datamodule: GemDataModule, split: str = "test") -> tuple[str, ...]:
    """The sources whose part of ``split`` a run reports beside the whole: each source with photos in it, where
    there are two or more (a run without ``data.extra_roots`` has none to report)."""
    present = {item.from_source for item in datamodule.prepared.items if item.split == split}
    parts = tuple(source for source in split_sources(datamodule) if source in present)
    return parts if len(parts) > 1 else ()


def check_shift(shift: str | None, input_given: bool) -> None:
    """Before any work: ``shift`` names a known shift and comes without ``input=`` (a typo costs no preparation)."""
    if shift is not None and input_given:
        raise GemLightningError("shift= shifts the run's own split; give it without input=")
    if shift is not None:
        shift_named(shift)


def evaluate_checkpoint(
    predictor: Predictor,
    split: str = "test",
    input_folder: str | Path | None = None,
    calibrate_first: bool = True,
    output_dir: str | Path | None = None,
    datamodule: GemDataModule | None = None,
    shift: str | None = None,
    shift_mask_model: str = "u2netp",
    split_source: str | None = None,
    *,
    answer_config: DictConfig,
) -> EvaluationRun:
    """Calibrate (optionally), evaluate and write the report; ``datamodule`` reuses a live one (train.py).

    ``shift`` evaluates shifted copies of the split's photos instead (gem_lightning.data.shifted_photos);
    ``split_source`` only the split's photos of one source (``split_sources``), into ``<split>-<source>/``.
    ``answer_config``: the command's (or run's) config, whose ``prediction_sets``, ``taxonomy`` and ``novelty``
    nodes say how sets are fitted and how answers are worded and measured (``trust.answers.answering_for``).
    """
    checked_choice(split, SPLITS, "split", hint=" (or input=<labelled folder>)")
    check_shift(shift, input_folder is not None)
    if split_source is not None and (input_folder is not None or shift is not None):
        raise GemLightningError("split_source= picks photos of the run's own split; give it without input= or shift=")
    model, checkpoint = predictor.model, predictor.checkpoint
    if datamodule is None and (calibrate_first or input_folder is None):
        datamodule = datamodule_of(model, checkpoint)
    if split_source is not None:  # before calibrating: a typo costs no calibration
        checked_choice(split_source, split_sources(datamodule), "split_source")
    if shift is not None:
        photos = [(item.photo, item.label) for item in datamodule.prepared.items if item.split == split]
        input_folder = build_shifted_folder(photos, shift, predictor.cache_dir, shift_mask_model)
    options = {"batch_size": predictor.batch_size, "num_workers": predictor.num_workers, "progress": predictor.progress}

    calibration = None
    if calibrate_first:
        # Every member on its own run's validation split; the first one's data module is at hand.
        members = zip(predictor.models, predictor.checkpoints, strict=True)
        fitted = [
            calibrate_checkpoint(
                member,
                path,
                datamodule if index == 0 else datamodule_of(member, path),
                options,
                answer_config.prediction_sets,
            )
            for index, (member, path) in enumerate(members)
        ]
        calibration = fitted[0]
    elif model.calibration:
        calibration = CalibrationResult(**model.calibration)
    if predictor.averaging:
        calibration = None  # each member's temperature was applied before averaging; the report's is 1

    if input_folder is None:
        datasets, sources, photos = split_datasets(predictor, datamodule, split, split_source)
        name, data = split, f"{split} split of {datamodule.root}"
        if split_source is not None:
            name, data = f"{split}-{split_source}", f"{data}, its photos of {split_source}"
    else:
        folder = Path(input_folder)
        datasets, sources, photos = labelled_folder(predictor, folder, predictor.cache_dir)
        name, data = folder.resolve().name, f"labelled folder {folder}"
        if shift is not None:
            name, data = f"{split}-shift-{shift}", f"the {split} split of {datamodule.root}, shift={shift}"
    result, temperature = predictor.logits(datasets, description=f"evaluating {name}")
    answering = answering_for(predictor, answer_config)  # after calibrating: the fits just stored
    evaluation = evaluate_logits(result, predictor.class_names, temperature, answering)
    name += predictor.folder_suffix
    folder = Path(output_dir) if output_dir else run_dir_of(checkpoint) / "evaluation" / name
    context = {
        "title": f"{predictor.describe_model()} on {data}",
        "checkpoint": ", ".join(str(path) for path in predictor.checkpoints),
        "data": data,
        "background": predictor.describe_background(),
    }
    report = write_evaluation_report(
        folder,
        evaluation,
        context,
        [path for path, _ in datasets[0].items],
        sources,
        predictor.image_size,
        calibration,
        explained_by=model,
    )
    return EvaluationRun(report, evaluation, calibration)
