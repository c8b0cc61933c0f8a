"""The classifier as ONNX and TorchScript files, each checked against the predictor (command: ``gem-export``)."""

# Both files take what the training pipeline feeds the model, a uint8 RGB batch (N, 3, S, S) at the
# checkpoint's image size S with any N, and return ``logits`` and calibrated ``probabilities`` (softmax of the
# logits divided by the stored temperature); normalisation is inside, and the white balance a run trained with,
# so a runtime needs no preprocessing constants. Class names, image size and temperature travel inside each file
# (ONNX metadata, a TorchScript extra file) and in ``model.json`` beside them.
#
# An ensemble (``ckpt=[a,b]``) or test-time views (``tta=flip|quarter_turns|dihedral``) export as one network that
# does what the predictor does: each member's logits of each view divided by that member's temperature, made
# probabilities and averaged; its ``logits`` output is the log of that mean. Members must share the image size.
#
# Each file is checked against the one inference loop (``Predictor.predict_tensor``) before it is kept:
# onnxruntime (and the TorchScript module) must reproduce its probabilities within ``tolerance`` (1e-4) on
# batches of two sizes, which also proves the batch dimension is dynamic.

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gem_lightning.data.image_dataset import evaluation_dataset
from gem_lightning.errors import GemLightningError
from gem_lightning.evaluation.checkpoint_evaluation import run_dir_of
from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.inference.logits import TTA_VIEWS
from gem_lightning.inference.predictor import Predictor
from gem_lightning.inference.user_photos import usable_images
from gem_lightning.models.classifier import GemClassifier, network_input
from gem_lightning.models.source_prototypes import SourcePrototypes
from gem_lightning.trust.prediction_sets import PredictionSets

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
METADATA_NAME = "gem_lightning.json"


class ExportableClassifier(nn.Module):
    """The classifier's network without Lightning: uint8 images in, (logits, calibrated probabilities) out."""

    def __init__(self, model: GemClassifier):
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        self.register_buffer("mean", model._mean.detach().clone())
        self.register_buffer("std", model._std.detach().clone())
        self.register_buffer("temperature", model.temperature.detach().clone())
        self.white_balance = model.hparams.white_balance  # traced as the constant it is
        # An adapted checkpoint's source prototypes, as GemClassifier.classify adds them.
        self.prototypes = SourcePrototypes.from_dict(model.source_prototypes) if model.source_prototypes else None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(network_input(images, self.white_balance, self.mean, self.std))
        logits = self.head(features)
        if self.prototypes is not None:
            logits = logits + self.prototypes.added_logits(features)
        return logits, (logits / self.temperature).softmax(-1)


class ExportableEnsemble(nn.Module):
    """Several classifiers and/or test-time views as one network: the mean of every member's calibrated
    probabilities over every view, as ``model_logits.averaged_probabilities`` computes it; logits are its log."""

    def __init__(self, models: list[GemClassifier], tta: str):
        super().__init__()
        self.members = nn.ModuleList(ExportableClassifier(model) for model in models)
        self.views = TTA_VIEWS[tta]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Every view in one batch, so the file holds each member's network once, not once per view (an ensemble
        # of two under tta=dihedral: 2 networks in the graph instead of 16). Eval-mode layers treat images alike.
        views = torch.cat([view(images) for view in self.views])
        probabilities = torch.cat(
            [member(views)[1].unflatten(0, (len(self.views), -1)) for member in self.members]
        ).mean(dim=0)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log(), probabilities


def _prediction_sets(predictor: Predictor, coverage: float) -> dict | None:
    """What a runtime needs to form the prediction sets from the probabilities output (null for an ensemble
    or views, which the sets were not fitted on)."""
    if predictor.prediction_sets is None:
        return None
    return {
        **PredictionSets(**predictor.prediction_sets).describe(coverage),
        "rule": "a class is in the set when its score is at most the threshold (lac: 1 - probability; aps: the "
        "summed probability of the classes at least as probable; raps: aps + penalty per rank past free_ranks); "
        "the most probable class always is",
    }


def metadata(predictor: Predictor, set_coverage: float) -> dict:
    model = predictor.model
    size = int(model.hparams.image_size)
    return {
        "class_names": model.class_names,
        "image_size": size,
        # Divides the logits output before its softmax; 1 where each member's own was applied before averaging.
        "temperature": float(model.temperature) if not predictor.averaging else 1.0,
        "members": [
            {
                "checkpoint": path.name,
                "temperature": float(member.temperature),
                "white_balance": member.hparams.white_balance,  # done inside the network, as in training
            }
            for path, member in zip(predictor.checkpoints, predictor.models, strict=True)
        ],
        "tta": predictor.tta,
        "input": {"name": "images", "dtype": "uint8", "shape": ["batch", 3, size, size], "layout": "RGB, 0-255"},
        "outputs": ["logits", "probabilities"],
        # An ensemble's or several views' logits output is the log of the averaged calibrated probabilities.
        "logits": "log of the averaged calibrated probabilities" if predictor.averaging else "the model's logits",
        "preprocessing": f"upright RGB, shorter side resized to {size} (antialiased), centre crop {size}x{size}",
        "background": (model.run_config or {}).get("background"),
        "prediction_sets": _prediction_sets(predictor, set_coverage),
    }


def export_onnx(network: nn.Module, example: torch.Tensor, path: Path, info: dict) -> None:
    import onnx

    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        draft = Path(scratch) / path.name
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(
            network,
            (example,),
            input_names=["images"],
            output_names=["logits", "probabilities"],
            dynamic_shapes={"images": {0: batch}},
            dynamo=True,
            verbose=False,
        )
        program.save(str(draft))
        proto = onnx.load(str(draft))
        onnx.helper.set_model_props(proto, {METADATA_NAME: json.dumps(info)})
        onnx.save(proto, str(draft))
        draft.replace(path)  # the finished file appears in one step


def export_torchscript(network: nn.Module, example: torch.Tensor, path: Path, info: dict) -> None:
    traced = torch.jit.trace(network, example)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        draft = Path(scratch) / path.name
        torch.jit.save(traced, str(draft), _extra_files={METADATA_NAME: json.dumps(info)})
        draft.replace(path)


def onnx_probabilities(path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(["probabilities"], {"images": images.numpy()})
    return torch.from_numpy(outputs[0])


def torchscript_probabilities(path: Path, images: torch.Tensor) -> torch.Tensor:
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(images)[1]


@dataclass(frozen=True)
class ParityCheck:
    file: Path
    batch_sizes: tuple[int, ...]
    max_abs_difference: float  # of the softmax probabilities, against PyTorch

    def passed(self, tolerance: float) -> bool:
        return self.max_abs_difference < tolerance


def check_images(predictor: Predictor, files: list[Path] | None, count: int = 8) -> torch.Tensor:
    """A uint8 batch to compare on: real photos when given (as prediction prepares them), else seeded noise."""
    size = int(predictor.model.hparams.image_size)
    usable, skipped = usable_images(files or [], max_pixels=predictor.max_image_pixels, limit=count)
    for item in skipped:
        log.warning("not comparing on %s: %s", item.source, item.reason)
    if usable:
        pictures = evaluation_dataset([(path, -1) for path in usable], size)
        return torch.stack([pictures[i][0] for i in range(len(usable))])
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def check_parity(predictor: Predictor, path: Path, fmt: str, images: torch.Tensor) -> ParityCheck:
    """Compare the exported file with the one inference loop on one image and on the whole batch."""
    run = onnx_probabilities if fmt == "onnx" else torchscript_probabilities
    worst = 0.0
    sizes = (1, len(images)) if len(images) > 1 else (1,)
    for size in sizes:
        batch = images[:size]
        expected = predictor.predict_tensor(batch)
        worst = max(worst, float((run(path, batch) - expected).abs().max()))
    return ParityCheck(path, sizes, worst)


def exportable_network(predictor: Predictor) -> nn.Module:
    """One network computing what ``predictor`` predicts for a batch (one shared image size)."""
    sizes = {int(model.hparams.image_size) for model in predictor.models}
    if len(sizes) > 1:
        raise GemLightningError(
            f"ckpt: the members take {' and '.join(map(str, sorted(sizes)))} px images; one exported file takes one "
            "size, so export members of one image size (the predictor and evaluate take mixed sizes)"
        )
    if not predictor.averaging:
        return ExportableClassifier(predictor.model).eval()
    return ExportableEnsemble(predictor.models, predictor.tta).eval()


def export_checkpoint(
    checkpoint: Path | list[Path],
    output_dir: Path | None = None,
    formats: tuple[str, ...] = FORMATS,
    check_files: list[Path] | None = None,
    tolerance: float = 1e-4,
    tta: str = "none",
    *,
    set_coverage: float,
) -> list[ParityCheck]:
    """Export ``checkpoint`` (or an ensemble, a list) with test-time views ``tta`` in ``formats`` and check each
    file; raises if one differs beyond ``tolerance``."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise GemLightningError(f"formats={list(formats)}: choose from {', '.join(FORMATS)}")
    predictor = Predictor(checkpoint, device="cpu", progress=False, tta=tta)
    network = exportable_network(predictor)
    default_dir = run_dir_of(predictor.checkpoint) / f"export{predictor.folder_suffix}"
    output_dir = Path(output_dir) if output_dir else default_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    info = metadata(predictor, set_coverage)
    images = check_images(predictor, check_files)
    # Batch 2 for tracing: batch 1 would let the exporter treat the batch size as a constant.
    example = images[:2] if len(images) >= 2 else images.repeat(2, 1, 1, 1)
    checks = []
    for fmt in formats:
        path = output_dir / FILE_NAMES[fmt]
        (export_onnx if fmt == "onnx" else export_torchscript)(network, example, path, info)
        check = check_parity(predictor, path, fmt, images)
        checks.append(check)
        if not check.passed(tolerance):
            path.unlink()
            raise GemLightningError(
                f"{fmt} export differs from PyTorch by {check.max_abs_difference:.2e} (> {tolerance:g}); removed {path}"
            )
    write_text_atomically(output_dir / "model.json", json.dumps(info, indent=1))
    return checks
