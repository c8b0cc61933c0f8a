"""``python -m gem_lightning.cli.evaluate ckpt=...`` (or ``gem-evaluate``): calibrate a checkpoint and report on it."""

# 1. Calibrate (``calibrate=true``, the default): fit the temperature on the validation split of the
#    checkpoint's own training run (the data module is rebuilt from the config stored in the checkpoint, so
#    the split is the same one) and store it in the checkpoint.
# 2. Evaluate the run's test split (``split=test``; or ``split=val``), or any labelled folder
#    (``input=<folder>/<class>/<images>``, cut out as the run's photos were).
# 3. Write one report folder, by default ``<run dir>/evaluation/<split or folder>/``: ``report.md`` with the
#    confusion matrix, reliability diagram and misclassified gallery, ``evaluation.json``, ``per_class.csv``.
#    A list of folders (``input=[a/,b/]``, or ``sources=other_sources``) evaluates the split and each folder, a
#    report folder each, and sets them side by side in ``sources.md`` (gem_lightning.evaluation.sources).
#
# ``train.py`` does the same for its best checkpoint after testing (``evaluate: true`` in conf/train.yaml).

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from omegaconf import DictConfig, ListConfig

from gem_lightning.cli.front_end import run_command
from gem_lightning.files.shown_paths import shown_path

if TYPE_CHECKING:
    from gem_lightning.evaluation.checkpoint_evaluation import EvaluationRun


def print_evaluation(run: EvaluationRun) -> None:
    from gem_lightning.evaluation.trust_report import shift_line

    s = run.evaluation.summary
    line = f"top-1 {s['top1']:.4f}, top-5 {s['top5']:.4f}, macro F1 {s['f1_macro']:.4f} on {int(s['images'])} images"
    if "top1_leak_free" in s:
        line += f"; leak-free top-1 {s['top1_leak_free']:.4f}"
    print(line)
    print(
        f"temperature {run.evaluation.temperature:.3f}: NLL {s['nll_before']:.4f} -> {s['nll_after']:.4f}, "
        f"ECE {s['ece_before']:.4f} -> {s['ece_after']:.4f}"
    )
    trust = run.evaluation.trust
    if trust is not None and trust.novelty is not None and trust.novelty.shifted:
        print(shift_line(trust.novelty).replace("**", ""))
    print(f"report: {shown_path(run.report)}")


def run(cfg: DictConfig) -> int:
    # Imported once running: a worker this spawns runs this module again (tests/machine/test_spawned_workers.py).
    from gem_lightning.evaluation.checkpoint_evaluation import check_shift, evaluate_checkpoint
    from gem_lightning.evaluation.sources import evaluate_sources
    from gem_lightning.inference.predictor import Predictor

    predictor = Predictor.from_command_config(cfg)
    if isinstance(cfg.input, ListConfig):
        check_shift(cfg.shift, input_given=True)
        table, runs = evaluate_sources(
            predictor, cfg.split, list(cfg.input), cfg.calibrate, cfg.output_dir, answer_config=cfg
        )
        for evaluation_run in runs:
            print_evaluation(evaluation_run)
        print(table.read_text(), end="")
        print(f"table: {shown_path(table)}")
        return 0
    settings = {
        "shift": cfg.shift,
        "shift_mask_model": cfg.shift_mask_model,
        "split_source": cfg.split_source,
        "answer_config": cfg,
    }
    print_evaluation(evaluate_checkpoint(predictor, cfg.split, cfg.input, cfg.calibrate, cfg.output_dir, **settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    description = "Calibrate a checkpoint on its validation split and write an evaluation report."
    return run_command("evaluate", description, run, argv)


if __name__ == "__main__":
    sys.exit(main())
