"""sweep.py for real: Optuna studies in SQLite and PostgreSQL, Lightning trials on the tiny demo set.

Trials are shrunk like the other tests (tests/helpers/configs.py TINY_DEMO): 10 classes x 12 images at 32 px, a few
epochs of a few batches, so a trial takes seconds on a 2-core CPU.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from gem_lightning.cli.sweep import main as sweep_main
from gem_lightning.errors import GemLightningError
from gem_lightning.sweeps.search_space import SearchSpace
from gem_lightning.sweeps.storage import load_study, open_storage, storage_url
from tests.helpers.configs import TINY_DEMO
from tests.helpers.postgres_server import find_postgres_bin, postgres_server
from tests.helpers.workplace import CONFIG_DIR, REPO_ROOT

optuna.logging.set_verbosity(optuna.logging.WARNING)

# train.py overrides for every trial: the tiny demo, 3 epochs, checkpoints written (resume needs last.ckpt).
TRIAL_SIZE = [*TINY_DEMO, "trainer.max_epochs=3", "data.demo.images_per_class=10"]


def _paths(workdir: Path) -> list[str]:
    return [f"paths.root_dir={workdir}"]


def _sweep_args(workdir: Path, study: str, n_trials: int, *extra: str) -> list[str]:
    return [*TRIAL_SIZE, *_paths(workdir), "--study-name", study, "--n-trials", str(n_trials), *extra]


def _study(workdir: Path, name: str, url: str | None = None) -> optuna.Study:
    storage = url or f"sqlite:///{workdir / 'outputs' / 'sweeps' / name / 'study.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.load_study(study_name=name, storage=str(storage_url(storage, workdir)))


def _sweep_process(args: list[str], log_file: Path) -> subprocess.Popen:
    # faulthandler: a sweep that hangs can be made to print every thread's stack into its log (_exit_code).
    return subprocess.Popen(
        [sys.executable, "sweep.py", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        stdout=log_file.open("w"),
        stderr=subprocess.STDOUT,
    )


def _exit_code(process: subprocess.Popen, log_file: Path, timeout: float = 120) -> int:
    """The process's exit code; if it has not ended within ``timeout`` s, the test fails with its log's end
    and every thread's stack (SIGABRT makes faulthandler print them)."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait(timeout=30)
        end = "\n".join(log_file.read_text().splitlines()[-150:])
        pytest.fail(f"the sweep did not end within {timeout} s; the end of its log:\n{end}")


def _assert_no_trial_trained_twice(study: optuna.Study) -> None:
    trained = [
        t for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)) if "repeat_of" not in t.user_attrs
    ]
    as_text = [repr(sorted(t.params.items())) for t in trained]
    assert len(as_text) == len(set(as_text)), f"the same parameters trained twice: {as_text}"
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))


# -- the search space ----------------------------------------------------------------------------------------


def test_the_default_search_space_reads_hydras_sweep_syntax():
    params = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "sweep" / "default.yaml").params)
    space = SearchSpace.from_params(params)
    lr = space.distributions["optim.lr"]
    assert isinstance(lr, FloatDistribution) and lr.log and (lr.low, lr.high) == (1e-5, 3e-3)
    assert space.distributions["data.batch_size"] == CategoricalDistribution([16, 32, 48, 64])
    assert "colour_preserving" in space.distributions["augment"].choices
    assert isinstance(space.distributions["model.label_smoothing"], FloatDistribution)
    assert space.distributions["model.freeze_backbone_epochs"] == CategoricalDistribution([0, 1, 2])

    more = SearchSpace.from_params(
        {"a": "range(16, 65, 16)", "b": "int(interval(0, 3))", "c": "tag(log, int(interval(8, 64)))", "d": 7}
    )
    assert more.distributions["a"] == IntDistribution(16, 64, step=16)
    assert more.distributions["b"] == IntDistribution(0, 3)
    assert more.distributions["c"] == IntDistribution(8, 64, log=True)
    assert more.fixed == {"d": 7}
    assert set(more.without(["a", "d"]).distributions) == {"b", "c"}


@pytest.mark.parametrize(
    ("expression", "message"),
    [("tag(lg, interval(1, 2))", "unknown tag"), ("tag(log, choice(1, 2))", "needs interval"), ("choice(", "not a")],
)
def test_a_bad_search_expression_names_the_key(expression, message):
    with pytest.raises(GemLightningError, match=rf"sweep\.params\.x: .*{message}"):
        SearchSpace.from_params({"x": expression})


def test_the_command_line_fixes_a_searched_key(tmp_path, capsys):
    # augment is in the default space; given on the command line it is no longer searched.
    status = sweep_main([*_sweep_args(tmp_path, "fixed", 1), "augment=seed", "optim.lr=0.001"])
    assert status == 0
    (trial,) = _study(tmp_path, "fixed").trials
    assert "augment" not in trial.params and "optim.lr" not in trial.params
    config = OmegaConf.load(Path(trial.user_attrs["run_dir"]) / ".hydra" / "config.yaml")
    assert config.augment.name == "seed" and config.optim.lr == 0.001


# -- a sweep, its results and its best config -------------------------------------------------------------------


def test_a_few_trial_sweep_writes_trials_tensorboard_runs_and_a_best_config_that_trains(tmp_path, capsys):
    assert sweep_main(_sweep_args(tmp_path, "few", 3)) == 0
    out = capsys.readouterr().out
    sweep_dir = tmp_path / "outputs" / "sweeps" / "few"
    study = _study(tmp_path, "few")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    _assert_no_trial_trained_twice(study)

    rows = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"complete"}
    assert [float(r["value"]) for r in rows] == pytest.approx([t.value for t in study.trials], abs=1e-6)
    assert {"params_optim.lr", "params_augment", "epochs", "note", "run_dir"} <= set(rows[0])
    assert "params_data.batch_size" not in rows[0]  # TINY_DEMO sets data.batch_size: fixed, not searched
    assert f"best: trial #{study.best_trial.number}, val/acc_best = {study.best_value:.4f}" in out
    assert "finished trials: 3 of 3 (0 pruned); trial-epochs trained: 9" in out

    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent == sweep_dir / "trials"
        # Each trial is a train.py run with its own TensorBoard run; the HParams record holds its sampled values.
        hparams = OmegaConf.load(run_dir / "tensorboard" / "hparams.yaml")
        assert hparams["optim/lr"] == pytest.approx(trial.params["optim.lr"])
        assert hparams["augment/name"] == trial.params["augment"]
        assert list(run_dir.glob("tensorboard/events.out.tfevents.*"))
        overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
        assert "test=false" in overrides  # trials are compared on validation; the test split waits
        # Only the best trial keeps its checkpoints (sweep.keep_checkpoints=best).
        assert (run_dir / "checkpoints").exists() == (trial.number == study.best_trial.number)

    # experiment/best.yaml composes to the best trial's config (its trial-only test=false aside) ...
    assert (sweep_dir / "experiment" / "best.yaml").is_file()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        from_file = compose("train", overrides=[f"hydra.searchpath=[file://{sweep_dir}]", "experiment=best"])
        best_trial = study.best_trial
        sampled = [f"{k}={v}" for k, v in best_trial.params.items()]
        expected = compose("train", overrides=[*TRIAL_SIZE, *sampled])
    written, wanted = OmegaConf.to_container(from_file), OmegaConf.to_container(expected)
    for key in ("data", "model", "optim", "augment", "trainer", "scheduler", "logger", "task_name", "seed"):
        assert written[key] == wanted[key], key
    # TINY_DEMO's ~callbacks.rich_progress_bar is written as a null callback, which train() skips.
    assert written["callbacks"].pop("rich_progress_bar") is None
    assert written["callbacks"] == wanted["callbacks"]
    assert from_file.test is True

    # ... and the command printed for it trains and tests.
    command = f"python train.py --config-dir {sweep_dir} experiment=best"
    assert "experiment=best" in out and "--config-dir" in out
    result = subprocess.run(
        [sys.executable, "train.py", "--config-dir", str(sweep_dir), "experiment=best", *_paths(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert "test/acc" in result.stdout


def test_a_pruner_that_must_prune_prunes_every_trial_after_one_epoch(tmp_path, capsys):
    # val/acc can never exceed 1.0, so a threshold of 1.01 with no warm-up prunes at the first report.
    args = _sweep_args(
        tmp_path, "pruned", 2, "sweep/pruner=threshold", "sweep.pruner.lower=1.01", "sweep.pruner.n_warmup_steps=0"
    )
    assert sweep_main(args) == 0
    study = _study(tmp_path, "pruned")
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert [len(t.intermediate_values) for t in study.trials] == [1, 1]  # 1 of 3 epochs trained
    out = capsys.readouterr().out
    assert "finished trials: 2 of 2 (2 pruned); trial-epochs trained: 2" in out
    assert "no trial has completed yet" in out


def test_a_small_categorical_space_is_not_trained_twice(tmp_path):
    # Everything but augment (4 policies) fixed on the command line, 5 trials asked for: at least one
    # repeats, and takes the earlier outcome without training.
    fixed = ["optim.lr=0.001", "optim.weight_decay=0", "model.label_smoothing=0", "model.freeze_backbone_epochs=0"]
    assert sweep_main(_sweep_args(tmp_path, "small", 5, "trainer.max_epochs=1", *fixed)) == 0
    study = _study(tmp_path, "small")
    finished = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(finished) == 5 and set(finished[0].params) == {"augment"}
    _assert_no_trial_trained_twice(study)
    repeats = [t for t in finished if "repeat_of" in t.user_attrs]
    assert repeats, "5 trials over 4 parameter sets must repeat"
    for repeat in repeats:
        assert repeat.value == study.trials[repeat.user_attrs["repeat_of"]].value
        assert not Path(repeat.user_attrs["run_dir"]).exists()


# -- resuming and sharing a study ---------------------------------------------------------------------------------


def _log_excerpt(log_file: Path) -> str:
    """A sweep log's error lines (any worker's) and its end: the end alone shows the worker that went on."""
    lines = log_file.read_text().splitlines()
    errors = [line for line in lines if "Error" in line or "Traceback" in line or "error:" in line]
    return "\n".join(["error lines:", *errors[:40], "end of the log:", *lines[-25:]])


def _wait_for(process: subprocess.Popen, path: Path) -> None:
    deadline = time.monotonic() + 300
    while not path.is_file():
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_the_requested_trials_without_duplicates(tmp_path):
    """A sweep killed by SIGTERM, its rerun killed by SIGKILL while it resumes the interrupted trial, and a third
    run that finishes: each retry resumes from the attempt before it, and the budget counts finished trials."""
    name = "killed"
    # A short heartbeat so a SIGKILLed worker's trial goes stale in seconds, not minutes; 8 epochs so that
    # each attempt is still training when its first last.ckpt appears.
    args = _sweep_args(tmp_path, name, 2, "trainer.max_epochs=8", "sweep.heartbeat_interval=1", "sweep.grace_period=3")
    trials_dir = tmp_path / "outputs" / "sweeps" / name / "trials"

    first = _sweep_process(args, tmp_path / "first.log")
    _wait_for(first, trials_dir / "0001" / "checkpoints" / "last.ckpt")
    os.kill(first.pid, signal.SIGTERM)
    assert _exit_code(first, tmp_path / "first.log") != 0
    interrupted = _study(tmp_path, name).trials[1]
    # Recorded at once: failed, and queued again with the same parameters.
    assert interrupted.state == TrialState.FAIL, (interrupted.state, _log_excerpt(tmp_path / "first.log"))
    assert "interrupted" in interrupted.user_attrs["failed"], interrupted.user_attrs

    second = _sweep_process(args, tmp_path / "second.log")
    _wait_for(second, trials_dir / "0002" / "checkpoints" / "last.ckpt")
    os.kill(second.pid, signal.SIGKILL)
    assert _exit_code(second, tmp_path / "second.log") != 0
    killed = _study(tmp_path, name).trials[2]
    # Nobody could record it; its heartbeat stops.
    assert killed.state == TrialState.RUNNING, (killed.state, _log_excerpt(tmp_path / "second.log"))
    assert killed.params == interrupted.params
    assert (
        f"resumes its interrupted attempt from {interrupted.user_attrs['run_dir']}"
        in (tmp_path / "second.log").read_text()
    ), _log_excerpt(tmp_path / "second.log")
    time.sleep(3.5)

    third = subprocess.run(
        [sys.executable, "sweep.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert third.returncode == 0, third.stderr[-3000:]
    study = _study(tmp_path, name)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 2, (states, third.stderr[-3000:])
    assert states.count(TrialState.FAIL) == 2 and {study.trials[1].state, study.trials[2].state} == {TrialState.FAIL}
    # Optuna's retry_history: the trial numbers it retries, oldest first (trial 2 retried trial 1).
    retry = next(t for t in study.trials if t.system_attrs.get("retry_history") == [1, 2])
    assert retry.params == interrupted.params and retry.state == TrialState.COMPLETE
    # The retry resumed from the killed attempt's last.ckpt instead of starting over.
    assert f"resumes its interrupted attempt from {killed.user_attrs['run_dir']}" in third.stderr, third.stderr[-3000:]
    assert "Restoring states from the checkpoint" in third.stdout + third.stderr, third.stderr[-3000:]
    _assert_no_trial_trained_twice(study)
    # Running the same command once more has nothing left to do.
    fourth = subprocess.run(
        [sys.executable, "sweep.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert fourth.returncode == 0 and len(_study(tmp_path, name).trials) == len(study.trials), fourth.stderr[-3000:]
    assert "finished trials: 2 of 2" in fourth.stdout, fourth.stdout[-3000:]


@pytest.mark.slow
def test_two_jobs_side_by_side_share_one_sqlite_study(tmp_path):
    args = _sweep_args(tmp_path, "jobs", 4, "--jobs", "2")
    result = subprocess.run(
        [sys.executable, "sweep.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = _study(tmp_path, "jobs")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4  # exactly 4: the budget is shared
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    _assert_no_trial_trained_twice(study)
    assert result.stdout.count("finished trials: 4 of 4") == 1  # the supervisor prints the results once


@pytest.mark.slow
def test_sigterm_to_the_jobs_supervisor_reaches_every_worker_and_the_sweep_resumes(tmp_path):
    # As many trials as workers: both are interrupted, and the rerun has only their retries to train.
    args = _sweep_args(tmp_path, "jobs-killed", 2, "--jobs", "2", "trainer.max_epochs=8")
    supervisor = _sweep_process(args, tmp_path / "first.log")
    trials_dir = tmp_path / "outputs" / "sweeps" / "jobs-killed" / "trials"
    deadline = time.monotonic() + 300
    while True:  # both workers in the middle of a trial
        assert supervisor.poll() is None and time.monotonic() < deadline, _log_excerpt(tmp_path / "first.log")
        # Read the study only once trials have saved epochs: a reader opening the file while the workers
        # create Optuna's tables would create them too, outside the workers' lock.
        if any(trials_dir.glob("*/checkpoints/last.ckpt")):
            running = [t for t in _study(tmp_path, "jobs-killed").trials if t.state == TrialState.RUNNING]
            if len(running) == 2 and all(t.intermediate_values for t in running):
                break
        time.sleep(0.2)
    supervisor.send_signal(signal.SIGTERM)
    assert _exit_code(supervisor, tmp_path / "first.log") != 0
    trials = _study(tmp_path, "jobs-killed").trials
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 2 and all("interrupted" in t.user_attrs["failed"] for t in interrupted)
    assert sum(t.state == TrialState.WAITING for t in trials) == 2  # both queued again
    assert not any(t.state == TrialState.RUNNING for t in trials)

    again = subprocess.run([sys.executable, "sweep.py", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    study = _study(tmp_path, "jobs-killed")
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 2
    retried = {t.system_attrs.get("failed_trial") for t in study.trials} - {None}
    assert retried == {t.number for t in interrupted}
    _assert_no_trial_trained_twice(study)


@pytest.mark.parametrize("pruner", ["median", "hyperband", "threshold", "none"])
def test_every_pruner_config_builds_with_the_train_config(pruner, tmp_path):
    from gem_lightning.config.composition import compose_train_config
    from gem_lightning.sweeps.plan import SweepPlan

    overrides = [*TRIAL_SIZE, *_paths(tmp_path)]
    cfg = compose_train_config(CONFIG_DIR, [*overrides, "sweep=backbones", f"sweep/pruner={pruner}"])
    plan = SweepPlan.from_config(cfg, overrides, CONFIG_DIR)
    built = plan.make_pruner()
    assert isinstance(built, optuna.pruners.BasePruner)
    assert "model" in plan.space.distributions  # sweep=backbones adds the backbone
    assert plan.sweep_dir == tmp_path / "outputs" / "sweeps" / "demo_backbones"


requires_postgres = pytest.mark.skipif(
    find_postgres_bin() is None and not os.environ.get("CI"),
    reason="PostgreSQL's initdb/pg_ctl are not installed (Debian: apt-get install postgresql; CI installs it)",
)


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


@pytest.mark.slow
@requires_postgres
def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    # Two separate commands, as on two machines: each has its own trial folders, the study is the server's.
    logs = []
    workers = []
    for worker in ("a", "b"):
        workdir = tmp_path / worker
        logs.append(tmp_path / f"{worker}.log")
        workers.append(_sweep_process(_sweep_args(workdir, "shared", 4, "--storage", postgres_url), logs[-1]))
    for process, log in zip(workers, logs, strict=True):
        assert process.wait(timeout=900) == 0, log.read_text()[-3000:]
    study = _study(tmp_path, "shared", postgres_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2, "both workers should have run trials"
    _assert_no_trial_trained_twice(study)
    for log in logs:
        assert "finished trials: 4 of 4" in log.read_text()


@requires_postgres
def test_a_postgresql_study_refuses_to_resume_with_other_settings(postgres_url):
    url = storage_url(postgres_url, Path("."))
    assert url.drivername == "postgresql+psycopg"
    storage = open_storage(url, heartbeat_interval=30, grace_period=60, max_retry=1)
    identity = {"overrides": ["experiment=demo"], "metric": "val/acc_best"}
    load_study(storage, "identity", "maximize", identity, optuna.pruners.NopPruner())
    load_study(storage, "identity", "maximize", identity, optuna.pruners.NopPruner())  # same: resumes
    with pytest.raises(GemLightningError, match=r"study 'identity' was started with other settings \(overrides"):
        load_study(storage, "identity", "maximize", {**identity, "overrides": []}, optuna.pruners.NopPruner())


def test_an_unreachable_database_is_one_clear_error(tmp_path, capsys):
    status = sweep_main([*_sweep_args(tmp_path, "nowhere", 1), "--storage", "postgresql://nobody@127.0.0.1:9/none"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: sweep.storage=postgresql+psycopg://nobody@127.0.0.1:9/none: cannot open")


def test_missing_data_stops_before_the_study_records_a_trial(tmp_path, capsys):
    assert sweep_main([f"paths.root_dir={tmp_path}", "--n-trials", "2", "--study-name", "nodata"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: data folder not found: {tmp_path / 'data' / 'gemstones'}")
    assert not (tmp_path / "outputs" / "sweeps" / "nodata").exists()


def test_a_table_creation_race_is_opened_again(tmp_path, monkeypatch):
    """The "table ... already exists" a second worker met once on a fresh SQLite file: it opens again."""
    from sqlalchemy.exc import OperationalError

    from gem_lightning.sweeps import storage as study_storage

    real, calls = study_storage.RDBStorage, []

    def first_one_races(*args, **kwargs):
        calls.append(args)
        storage = real(*args, **kwargs)  # the first worker's tables now exist
        if len(calls) == 1:
            raise OperationalError("CREATE TABLE trials", {}, Exception("table trials already exists"))
        return storage

    monkeypatch.setattr(study_storage, "RDBStorage", first_one_races)
    url = storage_url(None, tmp_path)
    storage = open_storage(url, heartbeat_interval=30, grace_period=120, max_retry=3)
    assert len(calls) == 2 and storage.get_all_studies() == []

    def broken_disk(*args, **kwargs):
        raise OperationalError("CREATE TABLE trials", {}, Exception("disk I/O error"))

    monkeypatch.setattr(study_storage, "RDBStorage", broken_disk)  # any other error: one line, no retry
    with pytest.raises(GemLightningError, match="cannot open the study database: disk I/O error"):
        open_storage(url, heartbeat_interval=30, grace_period=120, max_retry=3)
