"""``python -m gem_lightning.cli.predict ckpt=... input=<file|folder|glob>`` (or ``gem-predict``): identify photos.

Prints the top-k classes of every photo with their (calibrated) probabilities; ``output=x.json`` or
``output=x.csv`` also writes them. Unusable files are listed and skipped; the others go on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from gem_lightning.cli.front_end import run_command
from gem_lightning.errors import GemLightningError
from gem_lightning.files.atomic_writes import write_text_atomically

# The model's side is imported once running: a worker this command spawns (rembg cut-outs of the photos) runs
# this module again (tests/machine/test_spawned_workers.py).
if TYPE_CHECKING:
    from gem_lightning.inference.predictor import ImagePrediction, Predictor
    from gem_lightning.inference.user_photos import SkippedImage
    from gem_lightning.trust.answers import Answer, Answering

OUTPUT_FORMATS = (".json", ".csv")


def _nearest_rows(answer: Answer, class_names: list[str]) -> list[dict] | None:
    if answer.nearest is None:
        return None
    return [
        {"class": class_names[near.class_index], "file": str(near.file), "distance": near.distance}
        for near in answer.nearest
    ]


def _set_shift(answers: list[Answer]) -> dict | None:
    """The set test the answers were given with (each holds the same one); None without a novelty fit."""
    shift = answers[0].set_shift if answers else None
    if shift is None:
        return None
    return {
        "photos": shift.photos,
        "statistic": shift.statistic,
        "p_value": shift.p_value,
        "unlike_validation": shift.unlike_calibration,
    }


def predictions_document(
    predictor: Predictor,
    predictions: list[ImagePrediction],
    skipped: list[SkippedImage],
    k: int,
    answering: Answering,
) -> dict:
    """The JSON written by ``output=*.json`` (tests/inference/test_predict.py holds its schema)."""
    import torch

    answers = []
    if predictions:
        probabilities = torch.stack([item.probabilities for item in predictions])
        answers = answering.answers(probabilities, k, torch.stack([item.features for item in predictions]))
    fitted_sets = answering.prediction_sets
    return {
        "checkpoint": str(predictor.checkpoint),
        "checkpoints": [str(path) for path in predictor.checkpoints],
        "model": predictor.describe_model(),
        "tta": predictor.tta,
        "class_count": len(predictor.class_names),
        "image_size": predictor.image_size,
        "background": predictor.describe_background(),
        "temperature": predictor.temperature,
        # null: the checkpoint has no fitted sets (calibrate it with evaluate), or the answer averages models/views.
        "prediction_sets": None if fitted_sets is None else fitted_sets.describe(answering.coverage),
        "taxonomy": answering.taxonomy.name,
        # null: the checkpoint has no novelty fit (calibrate it with evaluate); every photo then gets a class.
        "novelty": None if answering.novelty is None else answering.novelty.describe(answering.accept),
        # null unless selective.accuracy is asked and the checkpoint has the fit: answer only when sure enough.
        "selective_answers": _selective(answering),
        # null without a novelty fit: are these photos, as a set, farther from the classes than validation photos?
        "set_shift": _set_shift(answers),
        "predictions": [
            {
                "file": str(item.source),
                "model_input": str(item.model_input),
                "answer": answer.sentence(),
                # false: "not one of the classes I know"; novelty: distance to the nearest class centroid
                "known": answer.known,
                "novelty": answer.novelty,
                # false: "not sure enough to answer" (selective.accuracy); null: every photo is answered
                "sure_enough": answer.sure_enough,
                # For each of the top classes its nearest training photos: real examples to compare with.
                "nearest_training_photos": _nearest_rows(answer, predictor.class_names),
                "top_k": [{"class": name, "probability": probability} for name, probability in answer.top],
                "prediction_set": answer.prediction_set,
                "family": None
                if answer.family is None
                else {
                    "name": answer.family.family,
                    "probability": answer.family.probability,
                    "classes": [{"class": name, "probability": p} for name, p in answer.family.members],
                },
            }
            for item, answer in zip(predictions, answers, strict=True)
        ],
        "skipped": [{"file": str(item.source), "reason": item.reason} for item in skipped],
    }


def _selective(answering: Answering) -> dict | None:
    fitted = answering.selective_answers
    if answering.accuracy is None or fitted is None:
        return None
    threshold = fitted.threshold(answering.accuracy)
    return {
        "accuracy": answering.accuracy,
        "threshold": threshold if math.isfinite(threshold) else None,  # null: no answer is given
        "fitted_on": f"{len(fitted.confidences)} {fitted.split} images",
    }


def predictions_csv(document: dict, k: int) -> str:
    """One row per photo: file, answer, known (yes, no, or empty without a novelty fit), class_1, probability_1,
    ... class_k, probability_k, prediction_set (its classes joined by "; "), family, skipped (the reason)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    ranks = range(1, k + 1)
    header = ["file", "answer", "known", *(f"{kind}_{rank}" for rank in ranks for kind in ("class", "probability"))]
    writer.writerow([*header, "prediction_set", "family", "skipped"])
    for row in document["predictions"]:
        cells = []
        for entry in row["top_k"]:
            cells += [entry["class"], f"{entry['probability']:.6f}"]
        cells += [""] * (2 * k - len(cells))
        members = "; ".join(row["prediction_set"]) if row["prediction_set"] is not None else ""
        family = row["family"]["name"] if row["family"] else ""
        known = {True: "yes", False: "no", None: ""}[row["known"]]
        writer.writerow([row["file"], row["answer"], known, *cells, members, family, ""])
    for row in document["skipped"]:
        writer.writerow([row["file"], "", "", *([""] * (2 * k)), "", "", row["reason"]])
    return buffer.getvalue()


def _print_table(document: dict) -> None:
    table = Table(title=f"{len(document['predictions'])} photo(s), temperature {document['temperature']:.3f}")
    table.add_column("file", overflow="fold")
    table.add_column("top class")
    table.add_column("probability", justify="right")
    table.add_column("next")
    table.add_column("answer")
    for row in document["predictions"]:
        first, *rest = row["top_k"]
        others = ", ".join(f"{entry['class']} {entry['probability']:.3f}" for entry in rest)
        table.add_row(row["file"], first["class"], f"{first['probability']:.3f}", others, row["answer"])
    Console().print(table)
    unsure = sum(row["sure_enough"] is False for row in document["predictions"])
    if unsure:
        accuracy = document["selective_answers"]["accuracy"]
        print(
            f"{unsure} photo(s) not answered: less sure than the validation answers that were {accuracy:.0%} right "
            "(selective.accuracy)"
        )
    unknown = sum(row["known"] is False for row in document["predictions"])
    if unknown:
        print(f"{unknown} photo(s) answered 'not one of the classes I know': far from every class the model learnt")
    shift = document["set_shift"]
    if shift is not None and shift["unlike_validation"]:
        print(
            f"as a set these {shift['photos']} photos are unlike the validation photos the answers were calibrated "
            f"on (farther from every class: one-sided Kolmogorov-Smirnov D {shift['statistic']:.3f}, p "
            f"{shift['p_value']:.1e}): the stated certainty may not hold for them"
        )
    for row in document["skipped"]:
        print(f"skipped {row['file']}: {row['reason']}")


def run(cfg: DictConfig) -> int:
    from gem_lightning.inference.predictor import Predictor
    from gem_lightning.inference.user_photos import find_images
    from gem_lightning.trust.answers import answering_for

    output = Path(cfg.output) if cfg.output else None
    if output is not None and output.suffix.lower() not in OUTPUT_FORMATS:
        raise GemLightningError(f"output={cfg.output}: the file name must end in .json or .csv")
    if cfg.top_k < 1:
        raise GemLightningError(f"top_k={cfg.top_k} must be at least 1")
    files = find_images(cfg.input)  # before loading the model: a typo in input= fails at once
    predictor = Predictor.from_command_config(cfg)
    answering = answering_for(predictor, cfg)
    k = min(cfg.top_k, len(predictor.class_names))
    predictions, skipped = predictor.predict_files(files)
    document = predictions_document(predictor, predictions, skipped, k, answering)
    _print_table(document)
    if output is not None:
        text = json.dumps(document, indent=1) if output.suffix.lower() == ".json" else predictions_csv(document, k)
        write_text_atomically(output, text)
        print(f"wrote {output}")
    if not predictions:
        raise GemLightningError(f"none of the {len(files)} file(s) under input={cfg.input} could be used")
    return 0


def main(argv: list[str] | None = None) -> int:
    description = "Identify gem photos with a trained checkpoint: top-k classes with probabilities."
    return run_command("predict", description, run, argv)


if __name__ == "__main__":
    sys.exit(main())
