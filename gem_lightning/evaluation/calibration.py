"""Temperature scaling (Guo et al., 2017): one scalar T that divides the logits, fitted on the validation split."""

# A fine-tuned network is usually over-confident; dividing its logits by T > 1 makes "0.9" mean right about
# nine times in ten without changing any prediction's rank, so accuracy stays exactly the same. T is fitted by
# minimising the negative log-likelihood of the validation labels and stored in the checkpoint (the model's
# ``temperature`` buffer, plus a record of the fit), so every later prediction uses it.

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from gem_lightning.errors import GemLightningError
from gem_lightning.files.atomic_writes import write_bytes_atomically
from gem_lightning.models.checkpoint_format import CHECKPOINT_KEY

log = logging.getLogger(__name__)

ECE_BINS = 15  # the usual choice since Guo et al.; the reliability diagram uses the same bins
# A tiny, perfectly separated validation set pushes T towards 0 without bound; these bounds keep it sane.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.double() / temperature, targets))


def expected_calibration_error(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-label ECE with equal-width confidence bins (torchmetrics' definition)."""
    num_classes = probabilities.shape[1]
    return float(multiclass_calibration_error(probabilities, targets, num_classes, n_bins=ECE_BINS, norm="l1"))


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float  # mean top-1 probability of the images in the bin (nan when empty)
    accuracy: float  # share of them predicted right (nan when empty)


def reliability_bins(probabilities: torch.Tensor, targets: torch.Tensor) -> list[ReliabilityBin]:
    """Top-1 confidence against accuracy in ``ECE_BINS`` equal-width bins (what the reliability diagram draws)."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == targets).double()
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float64)
    # Left-closed bins [a, b) as torchmetrics bins them; a confidence of exactly 1.0 joins the last bin.
    index = torch.bucketize(confidence.double(), edges[1:-1], right=True)
    bins = []
    for b in range(ECE_BINS):
        members = index == b
        count = int(members.sum())
        bins.append(
            ReliabilityBin(
                float(edges[b]),
                float(edges[b + 1]),
                count,
                float(confidence.double()[members].mean()) if count else math.nan,
                float(correct[members].mean()) if count else math.nan,
            )
        )
    return bins


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises the NLL of ``targets``."""
    if len(targets) == 0:
        raise GemLightningError("cannot fit a temperature on an empty validation split")
    logits = logits.detach().double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.clamp(low, high).exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(low, high).exp())


@dataclass(frozen=True)
class CalibrationResult:
    temperature: float
    split: str  # where T was fitted
    images: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def as_dict(self) -> dict:
        return asdict(self)


def calibrate(logits: torch.Tensor, targets: torch.Tensor, split: str = "val") -> CalibrationResult:
    """Fit T on (logits, targets) and measure NLL and ECE there before and after.

    When every image is classified right the NLL keeps falling as T -> 0: the fit would only push the model
    to certainty it has not earned (on the demo set T came out at 0.06), so T stays 1.
    """
    if bool((logits.argmax(dim=1) == targets).all()):
        log.warning("every %s image is classified right: nothing to calibrate against, temperature left at 1", split)
        temperature = 1.0
    else:
        temperature = fit_temperature(logits, targets)
    return CalibrationResult(
        temperature=temperature,
        split=split,
        images=len(targets),
        nll_before=negative_log_likelihood(logits, targets),
        nll_after=negative_log_likelihood(logits, targets, temperature),
        ece_before=expected_calibration_error(logits.softmax(-1), targets),
        ece_after=expected_calibration_error((logits / temperature).softmax(-1), targets),
    )


def store_calibration(
    checkpoint_path: Path, result: CalibrationResult, fitted_after: Mapping[str, dict], written_to: Path | None = None
) -> None:
    """Write the temperature and what was fitted after it (``fitted_after``: the ``as_dict()`` of the prediction
    sets, the novelty rule and the training photos, by their names in ``checkpoint_format.FITTED``) into the
    checkpoint, replacing the file atomically (or into a new file ``written_to``); weights stay untouched."""
    checkpoint_path = Path(checkpoint_path)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    checkpoint_path = Path(written_to) if written_to is not None else checkpoint_path
    checkpoint["state_dict"]["temperature"] = torch.tensor(result.temperature)
    checkpoint[CHECKPOINT_KEY]["temperature"] = result.temperature
    checkpoint[CHECKPOINT_KEY]["calibration"] = result.as_dict()
    checkpoint[CHECKPOINT_KEY].update(fitted_after)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    try:
        write_bytes_atomically(checkpoint_path, buffer.getvalue())
    except OSError as error:
        raise GemLightningError(
            f"cannot store the temperature in {checkpoint_path} ({error}): copy the checkpoint to a writable "
            "folder, or evaluate without calibrating (calibrate=false)"
        ) from error
