"""A sweep's results, read from its study: the trials table, the best trial, and the best config as an experiment.

Written into the sweep folder after every run of ``sweep.py`` (atomically, so concurrent workers can each
write them): ``trials.csv``, and ``experiment/best.yaml``, an experiment file that reproduces the best
trial's config exactly: ``python train.py --config-dir outputs/sweeps/<study> experiment=best``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from gem_lightning.config.composition import compose_train_config
from gem_lightning.files.atomic_writes import write_text_atomically
from gem_lightning.files.shown_paths import shown_path
from gem_lightning.sweeps.plan import SweepPlan
from gem_lightning.sweeps.search_space import as_overrides
from gem_lightning.sweeps.storage import shown

TRIALS_FILE = "trials.csv"
BEST_EXPERIMENT = Path("experiment") / "best.yaml"
# Groups an experiment file must not (or need not) select.
NOT_WRITTEN_GROUPS = ("experiment", "sweep", "paths")


def _note(trial: FrozenTrial) -> str:
    notes = []
    retried = trial.system_attrs.get("failed_trial")
    if retried is not None:
        notes.append(f"retry of #{retried}")
    if "repeat_of" in trial.user_attrs:
        notes.append(f"repeats #{trial.user_attrs['repeat_of']}, not trained")
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        notes.append(f"pruned after {len(trial.intermediate_values)} epoch(s)")
    if trial.state == TrialState.FAIL:
        notes.append(str(trial.user_attrs.get("failed", "its worker stopped sending heartbeats (killed?)")))
    return "; ".join(notes)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial, in trial order.

    ``epochs``: the epochs the trial's model has been trained for, a retry's included (a trial resumed after
    an interruption at epoch 5 of 8 shows 8); ``epochs_trained``: the epochs this attempt itself trained
    (0 for a repeat of a finished trial); ``retried_by``: the trial that resumed an interrupted one.
    """
    rows = []
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    retried_by = {t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs}
    for trial in trials:
        epochs = trained = len(trial.intermediate_values)
        if "repeat_of" in trial.user_attrs:
            trained = 0
        elif trial.system_attrs.get("retry_history"):
            # A retry inherits its interrupted attempt's reported epochs and resumes after them.
            trained -= len(by_number[trial.system_attrs["retry_history"][-1]].intermediate_values)
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "value": None if trial.value is None else round(trial.value, 6),
                "epochs": epochs,
                "epochs_trained": trained,
                "retried_by": retried_by.get(trial.number, ""),
                "seconds": trial.user_attrs.get("seconds"),
                **{f"params_{name}": value for name, value in trial.params.items()},
                "note": _note(trial),
                "run_dir": trial.user_attrs.get("run_dir", ""),
            }
        )
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _unresolved(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)


def _difference(base: dict, wanted: dict) -> dict:
    """The keys whose values in ``wanted`` differ from ``base``; a key ``wanted`` lacks becomes null."""
    changed = {}
    for key, value in wanted.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            inner = _difference(base[key], value)
            if inner:
                changed[key] = inner
        elif key not in base or base[key] != value:
            changed[key] = value
    for key in base:
        if key not in wanted:
            changed[key] = None  # e.g. ~callbacks.early_stopping: a null callback is not instantiated
    return changed


def best_overrides(plan: SweepPlan, best: FrozenTrial) -> list[str]:
    """The train.py overrides of the best trial, without the sweep's trial-only ones (test=false)."""
    return [*plan.base_overrides, *as_overrides(plan.space.fixed), *as_overrides(best.params)]


def experiment_text(plan: SweepPlan, best: FrozenTrial) -> str:
    """An experiment file that composes to the best trial's config (paths and Hydra's settings aside).

    Its config groups come from Hydra's record of the trial's choices; its values are what differs from
    those groups' defaults, so it reads like a hand-written experiment and survives edits to other keys.
    """
    overrides = best_overrides(plan, best)
    wanted = compose_train_config(plan.config_dir, overrides)
    choices = {
        group: choice
        for group, choice in wanted.hydra.runtime.choices.items()
        if not group.startswith("hydra") and group not in NOT_WRITTEN_GROUPS
    }
    defaults_only = compose_train_config(plan.config_dir, [f"{group}={choice}" for group, choice in choices.items()])
    skip = ("hydra", "paths")
    values = _difference(
        {k: v for k, v in _unresolved(defaults_only).items() if k not in skip},
        {k: v for k, v in _unresolved(wanted).items() if k not in skip},
    )
    header = (
        "# @package _global_\n"
        f"# Best trial #{best.number} of study {plan.study_name} ({plan.metric} = {best.value:.4f}) by sweep.py\n"
        f"# Run it: python train.py --config-dir {shown_path(plan.sweep_dir)} experiment=best\n"
        f"# (or copy it into conf/experiment/ under a name of its own and use experiment=<name>)\n"
        f"# Its overrides: {' '.join(overrides)}\n"
    )
    body = {"defaults": [{f"override /{group}": choice} for group, choice in choices.items()], **values}
    return header + OmegaConf.to_yaml(OmegaConf.create(body))


def write_results(plan: SweepPlan, study: optuna.Study) -> dict[str, Any]:
    """Write trials.csv and experiment/best.yaml; returns what the printed summary shows."""
    rows = trial_rows(study)
    if rows:
        write_text_atomically(plan.sweep_dir / TRIALS_FILE, _csv_text(rows))
    best = study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None
    best_file = None
    if best is not None:
        best_file = plan.sweep_dir / BEST_EXPERIMENT
        write_text_atomically(best_file, experiment_text(plan, best))
    return {"rows": rows, "best": best, "best_file": best_file}


def print_results(plan: SweepPlan, results: dict[str, Any]) -> None:
    rows, best = results["rows"], results["best"]
    # Not a terminal (a log file, CI): wide enough that parameter names are not cut.
    console = Console(width=None if Console().is_terminal else 200)
    # An interrupted attempt that a later trial resumed is that trial's past, not a row of its own on screen
    # (trials.csv keeps every attempt).
    shown_rows = [row for row in rows if row["retried_by"] == ""]
    table = Table(title=f"study {plan.study_name}: {len(shown_rows)} trial(s)")
    param_columns = [key for key in dict.fromkeys(k for row in rows for k in row) if key.startswith("params_")]
    names = [c.removeprefix("params_") for c in param_columns]
    headers = _short_names(names)
    for column in ("trial", "state", _short_names([plan.metric])[0], "epochs", "s", *headers):
        # Headers are never cut: a column is at least as wide as its name.
        table.add_column(column, justify="left" if column == "state" else "right", min_width=len(column))
    noted = []
    for row in shown_rows:
        cells = [str(row["trial"]), row["state"], "" if row["value"] is None else f"{row['value']:.4f}"]
        cells += [str(row["epochs"]), "" if row["seconds"] is None else f"{row['seconds']:.0f}"]
        cells += [_cell(row.get(column)) for column in param_columns]
        style = "bold green" if best is not None and row["trial"] == best.number else None
        table.add_row(*cells, style=style)
        if row["note"]:
            noted.append(f"  #{row['trial']}: {row['note']}")
    console.print(table)
    shortened = [f"{header} = {name}" for header, name in zip(headers, names, strict=True) if header != name]
    if shortened:
        print("columns: " + ", ".join(shortened))
    if noted:
        print("notes:", *noted, sep="\n")
    finished = [r for r in rows if r["state"] in ("complete", "pruned")]
    pruned = sum(r["state"] == "pruned" for r in rows)
    print(
        f"finished trials: {len(finished)} of {plan.n_trials} ({pruned} pruned); "
        f"trial-epochs trained: {sum(r['epochs_trained'] for r in rows)}"
    )
    if best is None:
        print("no trial has completed yet")
    else:
        print(f"best: trial #{best.number}, {plan.metric} = {best.value:.4f}")
        print(f"best params: {' '.join(as_overrides(best.params))}")
        checkpoint = best.user_attrs.get("best_checkpoint")
        if checkpoint:
            print(f"best checkpoint: {shown_path(checkpoint)}")
        print(f"best config: {shown_path(results['best_file'])}")
        print(f"  train and test it: python train.py --config-dir {shown_path(plan.sweep_dir)} experiment=best")
    print(f"trials table: {shown_path(plan.sweep_dir / TRIALS_FILE)}")
    print(f"TensorBoard (HParams tab compares trials): tensorboard --logdir {shown_path(plan.sweep_dir / 'trials')}")
    print(f"dashboard: optuna-dashboard {shown(plan.storage)}")
    print('  (optuna-dashboard comes with the dashboard extra: pip install -e ".[dashboard]")')


def _short_names(keys: list[str]) -> list[str]:
    """Each dotted key by its last part (``optim.weight_decay`` -> ``weight_decay``) where that is unambiguous."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return [short if last.count(short) == 1 else key for key, short in zip(keys, last, strict=True)]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)
