"""README.md's commands around the demo: the demo run and what uses its model, resuming, data-parallel training,
multiruns, Optuna sweeps, prediction, evaluation, adaptation and export; each run as a user types it, in a fresh
clone of this working tree (``tests/helpers/readme_commands.py``). The Kaggle-photo commands are in
``test_readme_kaggle_commands.py``, the SLURM ones in ``test_readme_cluster_commands.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from gem_lightning.models.classifier import GemClassifier
from tests.helpers.readme_commands import (
    COMMAND_TESTS,
    DDP_SHRINK,
    HAS_CUDA,
    README,
    README_TEST_MODULES,
    SMALL_DEMO,
    Clone,
    _free_port,
    _get,
    _one_error_line,
    _poll_json,
    _stop,
    _value,
    check_every_command_of_the_module_ran,
    readme_commands,
)
from tests.helpers.train_command import epoch_logged


def test_every_readme_command_has_its_test():
    shown = readme_commands()
    assert sorted(set(shown)) == sorted(COMMAND_TESTS), "README.md's commands and COMMAND_TESTS differ"
    modules = [importlib.import_module(name) for name in README_TEST_MODULES]
    for name in COMMAND_TESTS.values():
        assert name.startswith("set-up: ") or any(callable(getattr(m, name, None)) for m in modules), name


# -- the demo and what uses its model ------------------------------------------------------------------------


@dataclass
class DemoRun:
    result: subprocess.CompletedProcess
    run_dir: Path
    checkpoint: str  # as printed: relative to the clone's root

    def use(self, clone: Clone, command: str, more: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """README's ``command`` with this run's checkpoint for its checkpoint (and ``more`` placeholders filled);
        it must succeed."""
        placeholders = {"<checkpoint>": self.checkpoint, "<best checkpoint>": self.checkpoint, **(more or {})}
        result = clone.run(command, placeholders=placeholders)
        assert result.returncode == 0, result.stderr[-3000:]
        return result


@pytest.fixture(scope="module")
def demo(clone) -> DemoRun:
    result = clone.run("python train.py experiment=demo")  # as typed, nothing shrunk: the README's main claim
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = clone.root / _value(result.stdout, "run dir")
    return DemoRun(result, run_dir, _value(result.stdout, "best checkpoint"))


def _readme_sample_output() -> list[str]:
    """The run's closing lines as README.md shows them (the plain block after the set-up commands)."""
    text = README.read_text()
    block = text.split("its evaluation report:\n\n```\n", 1)[1].split("```", 1)[0]
    return block.strip().splitlines()


# The line each epoch logs (gem_lightning.training.epoch_lines): its time and the time left in words ("about 2 min
# left"); the last has none.
EPOCH_LINE = re.compile(
    r"\[gem_lightning\.training\.epoch_lines\]\[INFO\] - epoch (\d+)/\d+: train loss \d\.\d{4} acc \d\.\d{4} \| "
    r"val loss \d\.\d{4} acc \d\.\d{4} best \d\.\d{4} \| [\d.]+ s(, about [\d.]+ (?:s|min|h) left)?$",
    re.MULTILINE,
)


def test_demo_trains_and_prints_what_readme_shows(clone, demo):
    out = demo.result.stdout
    for shown in _readme_sample_output():
        pattern = re.escape(shown)
        pattern = re.sub(r"\d{4}\\-\d\d\\-\d\d_\d\d\\-\d\d\\-\d\d", r"[0-9_-]{19}", pattern)
        pattern = pattern.replace(re.escape("(epoch 7, val/acc 1.0000)"), r"\(epoch \d+, val/acc [01]\.\d{4}\)")
        assert re.search(rf"^{pattern}$", out, re.MULTILINE), f"README shows {shown!r}; printed:\n{out[-2000:]}"
    assert demo.run_dir.parent == clone.root / "outputs" / "demo" / "runs"
    result = json.loads((demo.run_dir / "metrics.json").read_text())
    # README: "test accuracy about 90 %" (chance is 10 %): far above chance, whatever the CPU's rounding.
    assert result["metrics"]["test/acc"] >= 0.8, result["metrics"]
    checkpoints = demo.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == result["epochs"] - 1  # the last epoch trained, not the best one
    umask = os.umask(0)
    os.umask(umask)
    for written in (checkpoints / "best.ckpt", checkpoints / "last.ckpt", demo.run_dir / "metrics.json"):
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask, written
    assert (clone.root / "cache" / "demo_gems").is_dir()
    # Its stdout is a pipe, as under nohup or SLURM: no terminal, so each epoch logs its line there too, and in
    # train.log; the last one without a time left.
    epochs = [str(epoch) for epoch in range(1, result["epochs"] + 1)]
    assert [m.group(1) for m in EPOCH_LINE.finditer(out)] == epochs, out[-3000:]
    assert [bool(m.group(2)) for m in EPOCH_LINE.finditer(out)] == [True] * (len(epochs) - 1) + [False]
    assert [m.group(1) for m in EPOCH_LINE.finditer((demo.run_dir / "train.log").read_text())] == epochs
    assert "test/acc" in out and "val/acc_best" in out  # the metrics table
    if shutil.which("srun"):  # Lightning's hint for SLURM users, outside a SLURM job (library_noise)
        assert "srun" not in demo.result.stderr
    assert (demo.run_dir / ".hydra" / "config.yaml").is_file()
    assert list((demo.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_predict_the_demo_rubies(clone, demo):
    result = demo.use(clone, "python -m gem_lightning.cli.predict ckpt=<best checkpoint> input=cache/demo_gems/Ruby")
    rows = [line for line in result.stdout.splitlines() if "ruby_" in line.lower()]
    assert len(rows) == 60
    assert sum(" Ruby " in row for row in rows) >= 45  # top class Ruby for most of them


def readme_python_blocks() -> list[str]:
    """The code of README.md's ```python blocks."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)


def test_the_python_block_identifies_the_demo_rubies(clone, demo):
    (block,) = readme_python_blocks()  # "Checkpoints and resuming": load a checkpoint in your own code
    shown = "outputs/demo/runs/<time>/checkpoints/best.ckpt"
    assert shown in block
    checkpoint = str(demo.run_dir.relative_to(clone.root) / "checkpoints" / "best.ckpt")
    code = block.replace(shown, checkpoint)
    # What the block leaves to the reader: a batch of photos as uint8 at the checkpoint's image size.
    before = (
        "import numpy as np, torch\n"
        "from pathlib import Path\n"
        "from PIL import Image\n"
        f"size = torch.load({checkpoint!r}, weights_only=True)['hyper_parameters']['image_size']\n"
        "photos = sorted(Path('cache/demo_gems/Ruby').iterdir())[:12]\n"
        "uint8_images = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert('RGB')"
        ".resize((size, size)))).permute(2, 0, 1) for p in photos])\n"
    )
    after = "print(' '.join(model.class_names[i].replace(' ', '_') for i in probabilities.argmax(1)))\n"
    result = subprocess.run(
        [sys.executable, "-c", before + code + after],
        cwd=clone.root,
        env=clone.env(None),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = result.stdout.split()
    assert len(answers) == 12 and answers.count("Ruby") >= 9, answers


def test_cfg_job_prints_the_composed_config(clone):
    command = "python train.py --cfg job"
    assert f"`{command}` prints the composed config" in README.read_text()
    result = clone.run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    import yaml

    composed = yaml.safe_load(result.stdout)
    assert composed["model"]["backbone"] == "resnet18" and composed["model"]["allow_download"] is True
    assert composed["data"]["root"] == "${paths.data_dir}/gemstones" and composed["optim"]["lr"] == 3.0e-4
    assert not (clone.root / "outputs" / "train").exists()  # printed, nothing run


def test_web_page_serves(clone, demo):
    for command in (
        "python -m gem_lightning.cli.web ckpt=<best checkpoint>",
        "python -m gem_lightning.cli.web ckpt=<checkpoint>",
    ):
        assert command in COMMAND_TESTS
    port = _free_port()
    server = clone.start(
        "python -m gem_lightning.cli.web ckpt=<best checkpoint>",
        f"port={port}",
        placeholders={"<best checkpoint>": demo.checkpoint},
    )
    try:
        page = _get(f"http://127.0.0.1:{port}/", 120, server)
    finally:
        _stop(server)
    assert b"gradio" in page.lower()


def test_tensorboard_shows_the_runs(clone, demo):
    port = _free_port()
    server = clone.start("tensorboard --logdir outputs", f"--port={port}")
    base = f"http://127.0.0.1:{port}"
    run_name = f"demo/runs/{demo.run_dir.name}/tensorboard"
    wanted = ("train/loss", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/ece_calibrated")
    try:
        runs = _poll_json(f"{base}/data/runs", lambda runs: run_name in runs, 120, server)
        assert run_name in runs, runs
        tags = _poll_json(
            f"{base}/data/plugin/scalars/tags", lambda tags: set(wanted) <= set(tags.get(run_name, {})), 60, server
        )[run_name]
        layout = _poll_json(f"{base}/data/plugin/custom_scalars/layout", bool, 60, server)
    finally:
        _stop(server)
    for tag in wanted:
        assert tag in tags, sorted(tags)
    charts = json.dumps(layout)
    assert "train/loss" in charts and "val/loss" in charts  # the overfitting chart


# -- a run that was killed, resumed -------------------------------------------------------------------------


def _best_callback_state(checkpoint: dict) -> dict:
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor': 'val/acc'")]
    return state


def _kill_after_epoch_1(clone, overrides: str, whole_group: bool = True) -> Path:
    """``python train.py <overrides>`` killed (SIGKILL) once its last.ckpt holds epoch 1, mid-epoch 2 or in its
    validation; the last.ckpt. ``whole_group=False`` kills only the process the user started, and checks that
    the processes it started (data-parallel ranks) end with it."""
    killed = clone.start(f"python train.py {overrides}")
    runs = clone.root / "outputs" / "demo" / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()  # the clone's first run makes the folder
    deadline = time.monotonic() + 600
    last = None
    while time.monotonic() < deadline and killed.poll() is None:
        found = sorted(set(runs.iterdir()) - before) if runs.is_dir() else []
        # The cheap signal first: train.log's line for the second epoch (training.epoch_lines); only then is
        # the checkpoint (tens of MB) read, until it holds that epoch.
        if found and epoch_logged(found[0] / "train.log", 2):
            checkpoint = found[0] / "checkpoints" / "last.ckpt"
            if checkpoint.is_file() and torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] >= 1:
                last = checkpoint
                break
        time.sleep(0.2)
    assert last is not None, "the run never wrote last.ckpt for epoch 1"
    if whole_group:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        return last
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    deadline = time.monotonic() + 30
    while _processes_in_group(killed.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_in_group(killed.pid), "a process the killed run started outlived it by 30 s"
    return last


def _processes_in_group(group: int) -> list[str]:
    listed = subprocess.run(["ps", "-eo", "pgid=,pid=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in listed.splitlines() if line.split()[0] == str(group)]


def _resume(clone, overrides: str, last: Path, epochs: int) -> Path:
    """README's resume command on the killed run's last.ckpt; checks that it trained exactly the epochs after
    the last finished one and continued val/acc_best; the new run's folder."""
    state = torch.load(last, map_location="cpu", weights_only=True)
    finished = state["epoch"]  # the last epoch that finished
    best_before = _best_callback_state(state)["best_model_score"]  # the killed run's best val/acc
    relative = last.relative_to(clone.root)
    result = clone.run(
        "python train.py <the same overrides> ckpt_path=outputs/<task>/runs/<time>/checkpoints/last.ckpt",
        placeholders={"<the same overrides>": overrides, "<task>": "demo", "<time>": relative.parts[3]},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_dir = clone.root / _value(result.stdout, "run dir")
    assert resumed_dir != last.parent.parent  # a new folder, as README says
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == epochs - 1
    # It trained exactly the epochs after the last finished one: their val/acc points are all it logged.
    val_acc = _logged_by_epoch(resumed_dir, "val/acc")
    assert sorted(val_acc) == list(range(finished + 1, epochs)), val_acc
    val_best = _logged_by_epoch(resumed_dir, "val/acc_best")
    assert val_best[finished + 1] >= float(best_before) - 1e-6  # val/acc_best continues the killed run's maximum
    return resumed_dir


def _logged_by_epoch(run_dir: Path, tag: str) -> dict[int, float]:
    """``tag``'s value at the end of each epoch, as the run logged it to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    epoch_at_step = {e.step: round(e.value) for e in events.Scalars("epoch")}
    # (TensorBoard's HParams entry registers the optimised metric at step 0 first: no epoch is logged there.)
    return {epoch_at_step[e.step]: e.value for e in events.Scalars(tag) if e.step in epoch_at_step}


def test_resume_a_killed_run(small_demo_clone):
    clone = small_demo_clone
    # Only the epochs are checked here: no calibration/report or label audit (test_demo_... checks those), and the
    # small demo set at 32 px (as the multirun tests, which share the clone's cache of that size). Six epochs of
    # about a second: the run is killed after its second, and four are left to resume.
    overrides = f"experiment=demo {SMALL_DEMO} data.image_size=32 trainer.max_epochs=6 optim.lr=1e-2 evaluate=false"
    overrides += " label_audit=none"
    _resume(clone, overrides, _kill_after_epoch_1(clone, overrides), epochs=6)


# -- data-parallel training -----------------------------------------------------------------------------------


def _one_process_evaluation(checkpoint: Path) -> tuple[dict, dict]:
    """val/ and test/ metrics of ``checkpoint`` in one process, with its run's trainer settings (precision)."""
    from omegaconf import OmegaConf

    from gem_lightning.evaluation.checkpoint_evaluation import datamodule_of
    from gem_lightning.training.trainer_factory import build_trainer

    model = GemClassifier.from_checkpoint(checkpoint)
    data = datamodule_of(model, checkpoint)
    one_process = {"devices": 1, "strategy": "auto", "enable_progress_bar": False, "enable_model_summary": False}
    trainer = build_trainer(OmegaConf.create({**model.run_config["trainer"], **one_process}), logger=False)
    return trainer.validate(model, datamodule=data, verbose=False)[0], trainer.test(model, data, verbose=False)[0]


def test_data_parallel_on_two_cpu_processes(small_demo_clone, demo):
    clone = small_demo_clone
    result = clone.run("python train.py experiment=demo trainer=ddp_cpu", *DDP_SHRINK)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "All distributed processes registered. Starting with 2 processes" in output
    assert "data parallel: 2 processes x data.batch_size 32 = 64 images a step" in output
    run_dir = clone.root / _value(result.stdout, "run dir")
    # One run folder, written by rank 0: what a one-process run writes, and rank 1's log beside it.
    assert {p.name for p in run_dir.iterdir()} == {p.name for p in demo.run_dir.iterdir()} | {"train_ddp_process_1.log"}
    rank_1_log = (run_dir / "train_ddp_process_1.log").read_text()
    assert "7 classes; train" in rank_1_log
    for own_work in ("cached", "computing", "temperature", "label audit", "data parallel", "] - epoch "):
        assert own_work not in rank_1_log, rank_1_log  # no cache, calibration, audit, summary or epoch line
    assert epoch_logged(run_dir / "train.log", 3)  # rank 0 logs each epoch
    # Synchronised metrics: each epoch checkpointed scores, in one process, what the 2 processes logged for it.
    val_acc = _logged_by_epoch(run_dir, "val/acc")
    assert sorted(val_acc) == [0, 1, 2]
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = run_dir / "checkpoints" / name
        epoch = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
        validated, tested = _one_process_evaluation(checkpoint)
        assert validated["val/acc"] == pytest.approx(val_acc[epoch], abs=1e-6), (name, epoch)
    assert metrics["test/acc"] == pytest.approx(tested["test/acc"], abs=1e-6)  # best.ckpt's, as the run tested
    assert "test/ece_calibrated" in metrics and (run_dir / "evaluation" / "test" / "report.md").is_file()


def test_head_only_data_parallel_computes_the_features_once(small_demo_clone):
    clone = small_demo_clone
    # No label audit: it would cache the features before the processes start, and the race would not happen.
    # 36 px, which no other test trains at: the features are not in the clone's cache yet.
    shrink = [o if not o.startswith("data.image_size=") else "data.image_size=36" for o in DDP_SHRINK]
    result = clone.run(
        "python train.py experiment=demo trainer=ddp_cpu", *shrink, "model.head_only=true", "label_audit=none"
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    run_dir = clone.root / _value(result.stdout, "run dir")
    computed = [line for line in result.stdout.splitlines() if "computing resnet18 features" in line]
    rank_1_log = (run_dir / "train_ddp_process_1.log").read_text()
    assert len(computed) == 1 and "features" in (run_dir / "train.log").read_text(), computed
    assert "computing" not in rank_1_log and "backbone features from" in rank_1_log  # it read rank 0's file
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"]["test/acc"] > 0


def test_resume_a_killed_data_parallel_run(small_demo_clone):
    clone = small_demo_clone
    lean = ("evaluate=false", "label_audit=none")  # only the epochs and the ranks are checked here
    overrides = " ".join(("experiment=demo trainer=ddp_cpu", *DDP_SHRINK[:-1], "trainer.max_epochs=4", *lean))
    # Only the process the user started is killed: the rank it started must not live on without it.
    last = _kill_after_epoch_1(clone, overrides, whole_group=False)
    resumed_dir = _resume(clone, overrides, last, epochs=4)
    assert (resumed_dir / "train_ddp_process_1.log").is_file()  # resumed on 2 processes again


def test_ddp_on_a_machine_without_gpus_says_what_is_missing(clone):
    if HAS_CUDA:
        pytest.skip("this machine has a GPU: the command would train")
    line = _one_error_line(clone.run("python train.py experiment=demo trainer=ddp"))
    assert "trainer.accelerator=gpu" in line and "0 CUDA device(s)" in line and "trainer=cpu" in line


# -- multirun ------------------------------------------------------------------------------------------------


# One epoch at 32 px (README's demo trains at 64), of the small demo set (17 photos a class, in small_demo_clone;
# README's has 60): these tests check which jobs ran and where their files went, not what the demo learns
# (test_demo_... checks that, as typed).
ONE_SMALL_EPOCH = ("trainer.max_epochs=1", "data.image_size=32")
JOB_SHRINK = (*ONE_SMALL_EPOCH, SMALL_DEMO)


def _summary(clone, result) -> list[dict]:
    import csv

    summary = clone.root / _value(result.stdout, "summary")
    assert summary.parent.parent == clone.root / "outputs" / "demo" / "multiruns"
    return list(csv.DictReader(summary.open()))


def test_multirun(small_demo_clone):
    clone = small_demo_clone
    result = clone.run(
        "python train.py -m experiment=demo optim.lr=1e-3,3e-4 augment=seed,colour_preserving",
        *JOB_SHRINK,
        # The jobs and their summary are checked here; the evaluation and the audit by test_demo_...
        "evaluate=false",
        "label_audit=none",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _summary(clone, result)
    assert [row["status"] for row in rows] == ["done"] * 4
    assert {row["varied"] for row in rows} == {
        f"optim.lr={lr} augment={a}" for lr in ("0.001", "0.0003") for a in ("seed", "colour_preserving")
    }
    for row in rows:
        assert (Path(row["run_dir"]) / "checkpoints" / "best.ckpt").is_file()


def test_multirun_with_a_failing_job_lists_it_and_exits_1(small_demo_clone):
    clone = small_demo_clone
    result = clone.run(
        "python train.py -m experiment=demo trainer.max_epochs=1 optim.lr=1e-3,-1",
        *JOB_SHRINK[1:],
        "evaluate=false",
        "label_audit=none",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    rows = _summary(clone, result)
    assert rows[0]["status"] == "done"
    assert rows[1]["status"].startswith("failed: ") and "Invalid learning rate: -1" in rows[1]["status"]
    assert "error: 1 of 2 job(s) failed (job 1)" in result.stderr


def test_a_run_started_from_another_folder_uses_the_project_folders(small_demo_clone, tmp_path):
    clone = small_demo_clone
    result = clone.run(
        f"python {clone.root / 'train.py'} experiment=demo",
        *(*JOB_SHRINK, "test=false", "label_audit=none"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(_value(result.stdout, "run dir"))
    assert run_dir.is_absolute() and run_dir.parent == clone.root / "outputs" / "demo" / "runs"
    assert not list(tmp_path.iterdir())  # nothing written where the user happened to be


# -- Optuna sweeps -------------------------------------------------------------------------------------------

SWEEP_SHRINK = ("--n-trials", "2", *JOB_SHRINK)


@pytest.fixture(scope="module")
def demo_sweep(small_demo_clone) -> Path:
    clone = small_demo_clone
    result = clone.run("python sweep.py experiment=demo --n-trials 20", *SWEEP_SHRINK)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = clone.root / "outputs" / "sweeps" / "demo"
    assert f"trials table: {Path('outputs/sweeps/demo/trials.csv')}" in result.stdout
    assert 'pip install -e ".[dashboard]"' in result.stdout
    return sweep_dir


def test_sweep_demo(demo_sweep):
    import csv

    rows = list(csv.DictReader((demo_sweep / "trials.csv").open()))
    assert len(rows) == 2 and all(row["state"] in ("complete", "pruned") for row in rows)
    assert (demo_sweep / "experiment" / "best.yaml").is_file()


def test_sweep_backbones(small_demo_clone):
    clone = small_demo_clone
    result = clone.run(
        "python sweep.py experiment=demo sweep=backbones sweep/pruner=hyperband --study-name demo-backbones "
        "--n-trials 30",
        *SWEEP_SHRINK,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (clone.root / "outputs" / "sweeps" / "demo-backbones" / "trials.csv").is_file()


def test_sweep_on_a_gpu(clone):
    command = "python sweep.py model=efficientnet_lite0 --n-trials 40 trainer.gpus=1 --jobs 2"
    if HAS_CUDA:
        pytest.skip("a 40-trial Kaggle sweep on the GPU is the device check's job, not a test's")
    # The Kaggle photos' data config has no demo set to shrink.
    line = _one_error_line(clone.run(command, "--n-trials", "2", *ONE_SMALL_EPOCH))
    assert "trainer.gpus=1 asks for 1 GPU(s)" in line
    assert not (clone.root / "outputs" / "sweeps" / "train").exists()  # no study was started


def test_retrain_the_best_trial(small_demo_clone, demo_sweep):
    clone = small_demo_clone
    result = clone.run(
        "python train.py --config-dir outputs/sweeps/<study> experiment=best",
        *JOB_SHRINK,
        placeholders={"<study>": "demo"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc" in result.stdout


def test_tensorboard_compares_trials(small_demo_clone, demo_sweep):
    clone = small_demo_clone
    port = _free_port()
    server = clone.start(
        "tensorboard --logdir outputs/sweeps/<study>/trials", f"--port={port}", placeholders={"<study>": "demo"}
    )
    trials = {"0000/tensorboard", "0001/tensorboard"}
    try:
        runs = _poll_json(f"http://127.0.0.1:{port}/data/runs", lambda runs: trials <= set(runs), 120, server)
        plugins = _poll_json(
            f"http://127.0.0.1:{port}/data/plugins_listing", lambda p: p.get("hparams", {}).get("enabled"), 60, server
        )
    finally:
        _stop(server)
    assert trials <= set(runs), runs
    assert plugins["hparams"]["enabled"]


def test_optuna_dashboard(small_demo_clone, demo_sweep):
    clone = small_demo_clone
    command = 'pip install -e ".[dashboard]" && optuna-dashboard sqlite:///outputs/sweeps/<study>/study.db'
    dashboard = command.split("&&")[1].strip()  # the install is the test extra's (optuna-dashboard is in it)
    port = _free_port()
    server = clone.start(dashboard, f"--port={port}", placeholders={"<study>": "demo"})
    try:
        studies = json.loads(_get(f"http://127.0.0.1:{port}/api/studies", 120, server))
    finally:
        _stop(server)
    assert [study["study_name"] for study in studies["study_summaries"]] == ["demo"]


# -- a trained model in use ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def my_photos(clone, demo) -> Path:
    """A user's folder: a few photos, a notes file, a broken photo; and two labelled folders of other photos (the
    second's as a shop's small thumbnails)."""
    photos = clone.root / "my_photos"
    photos.mkdir()
    source = clone.root / "cache" / "demo_gems"
    for name in ("Ruby", "Emerald", "Sapphire Blue"):
        for photo in sorted((source / name).iterdir())[:2]:
            # PNGs named .jpg, as some Kaggle files are: the README's glob is 'my_photos/*.jpg'.
            shutil.copy(photo, photos / f"{name.replace(' ', '_')}_{photo.stem}.jpg")
    (photos / "readme.txt").write_text("bought in 2024\n")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    other = clone.root / "other_gems"
    for name in ("Ruby", "Emerald"):
        (other / name).mkdir(parents=True)
        for photo in sorted((source / name).iterdir())[-3:]:
            shutil.copy(photo, other / name / photo.name)
    shop = clone.root / "shop_photos"
    for name in ("Ruby", "Sapphire Blue"):
        (shop / name).mkdir(parents=True)
        for photo in sorted((source / name).iterdir())[-3:]:
            with Image.open(photo) as image:
                image.convert("RGB").resize((32, 32)).save(shop / name / f"{photo.stem}.jpg", quality=70)
    return photos


def test_predict_a_folder_to_json(clone, demo, my_photos):
    result = demo.use(
        clone, "python -m gem_lightning.cli.predict ckpt=<best checkpoint> input=my_photos/ output=predictions.json"
    )
    document = json.loads((clone.root / "predictions.json").read_text())
    assert len(document["predictions"]) == 6
    assert [Path(s["file"]).name for s in document["skipped"]] == ["broken.jpg"]  # readme.txt is no image
    said = [line for line in (result.stdout + result.stderr).splitlines() if "broken.jpg" in line]
    assert len(said) == 1 and said[0].startswith("skipped my_photos/broken.jpg: cannot decode")  # said once
    assert "readme.txt" not in result.stdout + result.stderr


def test_predict_a_glob_to_csv(clone, demo, my_photos):
    demo.use(
        clone,
        "python -m gem_lightning.cli.predict ckpt=<best checkpoint> input='my_photos/*.jpg' top_k=3 "
        "output=predictions.csv",
    )
    lines = (clone.root / "predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + 7  # header, six photos, the broken one with its reason


def test_evaluate_the_runs_test_split(clone, demo):
    result = demo.use(clone, "python -m gem_lightning.cli.evaluate ckpt=<checkpoint>")
    report = clone.root / _value(result.stdout, "report")
    assert report == demo.run_dir / "evaluation" / "test" / "report.md"
    # One number per measurement: the command's test accuracy is the run's logged one.
    logged = json.loads((demo.run_dir / "metrics.json").read_text())["metrics"]["test/acc"]
    assert f"top-1 {logged:.4f}" in result.stdout


def test_evaluate_a_folder(clone, demo, my_photos):
    result = demo.use(clone, "python -m gem_lightning.cli.evaluate ckpt=<checkpoint> input=other_gems/ calibrate=false")
    assert "on 6 images" in result.stdout
    assert (clone.root / _value(result.stdout, "report")).is_file()


def test_evaluate_sources_side_by_side(clone, demo, my_photos):
    result = demo.use(
        clone, "python -m gem_lightning.cli.evaluate ckpt=<checkpoint> input=[other_gems/,shop_photos/] calibrate=false"
    )
    table = clone.root / _value(result.stdout, "table")
    assert table == demo.run_dir / "evaluation" / "sources.md"
    rows = [line.split(" | ") for line in table.read_text().splitlines() if line.startswith("| ")][1:]
    names = [row[0].removeprefix("| ") for row in rows]
    assert names[0].startswith("test split") and names[1:] == ["other_gems", "shop_photos"]
    assert [row[1] for row in rows[1:]] == ["6", "6"]  # photos
    for folder in ("test", "other_gems", "shop_photos"):
        assert (demo.run_dir / "evaluation" / folder / "report.md").is_file()


@pytest.mark.parametrize(
    ("option", "report_folder"), [("tta=dihedral", "test-tta-dihedral"), ("shift=small", "test-shift-small")]
)
def test_evaluate_with_views_or_shifted_photos(clone, demo, option, report_folder):
    result = demo.use(clone, f"python -m gem_lightning.cli.evaluate ckpt=<checkpoint> {option}")
    assert clone.root / _value(result.stdout, "report") == demo.run_dir / "evaluation" / report_folder / "report.md"
    assert re.search(r"^top-1 [01]\.\d{4}, top-5", result.stdout, re.MULTILINE)
    if option.startswith("shift="):
        assert any((clone.root / "cache" / "shifted" / "small").rglob("*.png"))


def test_predict_with_an_ensemble(clone, demo, my_photos):
    result = demo.use(
        clone,
        "python -m gem_lightning.cli.predict ckpt=[<checkpoint>,<other checkpoint>] input=my_photos/",
        {"<other checkpoint>": demo.checkpoint.replace("best", "last")},
    )
    assert "temperature 1.000" in result.stdout  # each member's temperature is applied before averaging


def test_adapt_to_a_source(clone, demo, my_photos):
    result = demo.use(clone, "python -m gem_lightning.cli.adapt ckpt=<checkpoint> input=shop_photos/")
    adapted = clone.root / _value(result.stdout, "adapted checkpoint")
    assert adapted == demo.run_dir / "checkpoints" / "best-adapted-shop_photos.ckpt"
    assert "adapted to 3 photos each of 2 of 10 classes of shop_photos" in result.stdout
    try:
        # What it prints to do next: predict with the adapted checkpoint, as with any other.
        use = result.stdout.split("use it: ", 1)[1].splitlines()[0].replace("<photos>", "shop_photos/")
        predicted = clone.run(use)
        assert predicted.returncode == 0, predicted.stderr[-3000:]
        assert "Ruby" in predicted.stdout
    finally:
        adapted.unlink()  # the run's checkpoints folder as the other tests expect it


def test_adaptation_curve(clone, demo, my_photos):
    result = demo.use(
        clone, "python -m gem_lightning.cli.adapt ckpt=<checkpoint> input=[other_gems/,shop_photos/] curve=true"
    )
    figure = clone.root / _value(result.stdout, "curve")
    assert figure == demo.run_dir / "evaluation" / "adaptation.png"
    recall_table = figure.with_suffix(".md").read_text().split("Mean recall:\n\n", 1)[1].split("\n\n", 1)[0]
    rows = recall_table.splitlines()
    assert rows[0] == "| source | N = 0 | N = 1 | N = 3 | N = 5 | N = 10 |"
    assert [row.split(" | ")[0] for row in rows[2:]] == ["| other_gems", "| shop_photos"]


def test_export(clone, demo, my_photos):
    result = demo.use(clone, "python -m gem_lightning.cli.export ckpt=<checkpoint> input=my_photos/")
    export_dir = demo.run_dir / "export"
    assert {"model.onnx", "model.torchscript.pt", "model.json"} <= {p.name for p in export_dir.iterdir()}
    assert "onnx_ir" not in result.stdout + result.stderr  # its INFO lines are noise to a user


# -- last: every README command of this module ran -----------------------------------------------------------


def test_every_readme_command_ran(request):
    """Runs last (file order): each README command whose test is in this module was run by it, as shown."""
    check_every_command_of_the_module_ran(request)
