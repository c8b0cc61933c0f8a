"""Every command README.md shows, run as a user types it, in a fresh clone of this working tree.

The commands are read from README.md's ```bash blocks; ``COMMAND_TESTS`` names the test of each, and the
first test fails when README.md shows a command that has no test here (or a test names a command README.md
no longer shows). Each test runs its command in a subprocess from the clone's root, with no ``paths.*``,
``hydra.*`` or cache overrides: only overrides a user could type too are appended, to shrink the work
(``trainer.max_epochs=1``, ``data.image_size=64``, ``data.max_classes=2``, ``--n-trials 2``, ``port=``).
The clone sits beside a ``shared`` link to ../shared, and its ``data/gemstones`` links the Kaggle photos, as
README.md tells a user to lay them out.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gem_lightning.files.hashing import file_sha256
from gem_lightning.models.classifier import GemClassifier
from tests.helpers.postgres_server import find_postgres_bin, postgres_server
from tests.helpers.scratch_folders import fixture_folder
from tests.helpers.slurm_cluster import find_slurm, slurm_cluster
from tests.helpers.train_command import epoch_logged
from tests.helpers.workplace import GEMSTONES_DIR, OTHER_SOURCES_DIR, REPO_ROOT, SHARED_DIR, U2NET_DIR, needs_shared

README = REPO_ROOT / "README.md"
# Overrides no user types: a test that needs one is testing another command than README.md's.
FORBIDDEN_PREFIXES = ("paths.", "hydra.", "+paths.", "+hydra.", "data.cache_dir", "cache_dir")
HAS_CUDA = torch.cuda.is_available()


def readme_commands() -> list[str]:
    """Each command line of README.md's ```bash blocks, comments dropped, spaces collapsed."""
    commands, in_bash = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_bash = not in_bash and line.strip() == "```bash"
            continue
        if in_bash:
            command = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if command:
                commands.append(command)
    return commands


# README.md's commands -> the test here that runs each one. Set-up steps are run by .ci/run itself.
COMMAND_TESTS = {
    'pip install -e ".[test]"': "set-up: .ci/run installs the project exactly so",
    "python train.py experiment=demo": "test_demo_trains_and_prints_what_readme_shows",
    "python -m pytest": "set-up: .ci/run runs exactly this command",
    "python -m gem_lightning.cli.predict ckpt=<best checkpoint> input=cache/demo_gems/Ruby": (
        "test_predict_the_demo_rubies"
    ),
    "python -m gem_lightning.cli.web ckpt=<best checkpoint>": "test_web_page_serves",
    "python train.py model=efficientnet_lite0": "test_kaggle_pooled",
    "python train.py model=efficientnet_lite0 data.split=predefined": "test_kaggle_predefined",
    "python train.py model=efficientnet_lite0 data.root=/path/to/gemstones": "test_kaggle_elsewhere",
    "python train.py experiment=best_cpu": "test_best_cpu",
    "python train.py experiment=best_cpu data.extra_roots=[my_shop/]": "test_best_cpu_with_your_own_photos",
    "python train.py experiment=seed_report": "test_seed_report_names_the_missing_weights",
    "python train.py model=resnet18 trainer.gpus=1": "test_gpus_1_says_what_is_missing",
    "export U2NET_HOME=../shared/models/u2net": "set-up: the environment of the three commands below it",
    "python -m gem_lightning.cli.prepare --check background=rembg background.backend.model=u2netp": "test_prepare",
    "python -m gem_lightning.cli.prepare background=rembg background.backend.model=u2netp": "test_prepare",
    "python train.py model=efficientnet_lite0 background=rembg background.backend.model=u2netp": "test_prepare",
    "python train.py experiment=best_cpu background_swap=random": "test_best_cpu_with_background_swap",
    "python train.py experiment=robust_cpu": "test_robust_cpu",
    "python train.py experiment=framed_cpu": "test_framed_cpu",
    "python -m gem_lightning.cli.bench data_dir=data/gemstones": "test_bench",
    "python -m gem_lightning.cli.bench data_dir=data/gemstones && python train.py experiment=gpu_check "
    "data.root=data/gemstones": "test_gpu_check",
    "python train.py experiment=demo trainer=ddp_cpu": "test_data_parallel_on_two_cpu_processes",
    "python train.py experiment=demo trainer=ddp": "test_ddp_on_a_machine_without_gpus_says_what_is_missing",
    "python train.py -m experiment=demo optim.lr=1e-3,3e-4 augment=seed,colour_preserving": "test_multirun",
    "python sweep.py experiment=demo --n-trials 20": "test_sweep_demo",
    "python sweep.py experiment=demo sweep=backbones sweep/pruner=hyperband --study-name demo-backbones "
    "--n-trials 30": "test_sweep_backbones",
    "python sweep.py model=efficientnet_lite0 --n-trials 40 trainer.gpus=1 --jobs 2": "test_sweep_on_a_gpu",
    "python train.py --config-dir outputs/sweeps/<study> experiment=best": "test_retrain_the_best_trial",
    'pip install -e ".[cluster]"': "set-up: the cluster extra is part of the test extra .ci/run installs",
    "python train.py -m hydra/launcher=submitit_slurm experiment=demo optim.lr=1e-3,3e-4 "
    "augment=seed,colour_preserving": "test_multirun_on_slurm",
    "python sweep.py experiment=demo --n-trials 20 --jobs 4 sweep/launcher=slurm "
    "--storage postgresql://user:password@db-host/optuna": "test_sweep_workers_as_a_slurm_array",
    "python train.py -m hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=2 trainer=ddp_cpu "
    "experiment=demo": "test_data_parallel_on_slurm",
    "tensorboard --logdir outputs/sweeps/<study>/trials": "test_tensorboard_compares_trials",
    'pip install -e ".[dashboard]" && optuna-dashboard sqlite:///outputs/sweeps/<study>/study.db': (
        "test_optuna_dashboard"
    ),
    "tensorboard --logdir outputs": "test_tensorboard_shows_the_runs",
    "python train.py <the same overrides> ckpt_path=outputs/<task>/runs/<time>/checkpoints/last.ckpt": (
        "test_resume_a_killed_run"
    ),
    "python -m gem_lightning.cli.predict ckpt=<best checkpoint> input=my_photos/ output=predictions.json": (
        "test_predict_a_folder_to_json"
    ),
    "python -m gem_lightning.cli.predict ckpt=<best checkpoint> input='my_photos/*.jpg' top_k=3 "
    "output=predictions.csv": ("test_predict_a_glob_to_csv"),
    "python -m gem_lightning.cli.evaluate ckpt=<checkpoint>": "test_evaluate_the_runs_test_split",
    "python -m gem_lightning.cli.evaluate ckpt=<checkpoint> input=other_gems/ calibrate=false": (
        "test_evaluate_a_folder"
    ),
    "python -m gem_lightning.cli.evaluate ckpt=<checkpoint> input=[other_gems/,shop_photos/] calibrate=false": (
        "test_evaluate_sources_side_by_side"
    ),
    "python -m gem_lightning.cli.evaluate ckpt=<checkpoint> tta=dihedral": "test_evaluate_with_views_or_shifted_photos",
    "python -m gem_lightning.cli.evaluate ckpt=<checkpoint> shift=small": "test_evaluate_with_views_or_shifted_photos",
    "python -m gem_lightning.cli.predict ckpt=[<checkpoint>,<other checkpoint>] input=my_photos/": (
        "test_predict_with_an_ensemble"
    ),
    "python -m gem_lightning.cli.adapt ckpt=<checkpoint> input=shop_photos/": "test_adapt_to_a_source",
    "python -m gem_lightning.cli.adapt ckpt=<checkpoint> input=[other_gems/,shop_photos/] curve=true": (
        "test_adaptation_curve"
    ),
    "python -m gem_lightning.cli.export ckpt=<checkpoint> input=my_photos/": "test_export",
    'pip install -e ".[web]"': "set-up: the web extra is part of the test extra .ci/run installs",
    "python -m gem_lightning.cli.web ckpt=<checkpoint>": "test_web_page_serves",
}


def test_every_readme_command_has_its_test():
    shown = readme_commands()
    assert sorted(set(shown)) == sorted(COMMAND_TESTS), "README.md's commands and COMMAND_TESTS differ"
    for name in COMMAND_TESTS.values():
        assert name.startswith("set-up: ") or callable(globals().get(name)), name


# Each command the tests below ran, as README.md shows it (before placeholders are filled and settings appended);
# the last test of this module checks that every README command is among them.
COMMANDS_RAN: set[str] = set()


def _as_shown(command: str) -> str:
    """``command`` with README's two names for a checkpoint path made one: the same command either way."""
    return command.replace("<best checkpoint>", "<checkpoint>")


# -- the fresh clone and running commands in it -------------------------------------------------------------


@dataclass
class Clone:
    root: Path
    torch_home: Path

    def run(
        self,
        command: str,
        *shrink: str,
        placeholders: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: int = 900,
    ) -> subprocess.CompletedProcess:
        """``command`` as README.md shows it, with ``shrink`` appended, run from the clone's root."""
        assert command in COMMAND_TESTS or command.startswith("python "), command
        COMMANDS_RAN.add(_as_shown(command))
        return subprocess.run(
            self.argv(command, shrink, placeholders),
            cwd=cwd or self.root,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, command: str, *shrink: str, placeholders=None, env=None) -> subprocess.Popen:
        COMMANDS_RAN.add(_as_shown(command))
        return subprocess.Popen(
            self.argv(command, shrink, placeholders),
            cwd=self.root,
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def argv(self, command: str, shrink, placeholders) -> list[str]:
        for extra in shrink:
            assert not extra.lstrip("+~").startswith(FORBIDDEN_PREFIXES), f"{extra}: not what a user types"
        for placeholder, value in (placeholders or {}).items():
            command = command.replace(placeholder, value)
        assert "<" not in command and "/path/to" not in command, f"placeholder left in {command}"
        argv = [*shlex.split(command), *shrink]
        # The interpreter and console scripts of the environment running these tests.
        scripts = Path(sys.executable).parent
        if argv[0] == "python":
            argv[0] = sys.executable
        elif (scripts / argv[0]).is_file():
            argv[0] = str(scripts / argv[0])
        return argv

    def env(self, extra: dict[str, str] | None) -> dict[str, str]:
        """A user's shell, not this test process's: only the variables any login has (and the machine's BLAS,
        OpenMP and TLS settings), so nothing the tests set (PL_GLOBAL_SEED, U2NET_HOME, CI, ...) leaks into a run."""
        machine_settings = ("LC_", "OPENBLAS_", "OMP_")
        env = {k: v for k, v in os.environ.items() if k in USER_ENVIRONMENT or k.startswith(machine_settings)}
        # No user's hub cache: what a missing weights file does is part of what is tested.
        env["TORCH_HOME"] = str(self.torch_home)
        env["COLUMNS"] = "200"
        return {**env, **(extra or {})}


# What a user's shell has that a command may need: where programs and the home folder are, the language, the
# temp folder, and the machine's certificate settings.
USER_ENVIRONMENT = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TERM", "TMPDIR", "SSL_CERT_FILE"}


def _copy_working_tree(clone: Path) -> None:
    """Lay the working tree's uncommitted changes over the clone of HEAD (CI's tree has none)."""
    listed = subprocess.run(
        ["git", "ls-files", "--modified", "--others", "--exclude-standard", "--deleted", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source, target = REPO_ROOT / name, clone / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif target.exists():
            target.unlink()


@pytest.fixture(scope="module")
def clone(request, tmp_path_factory) -> Iterator[Clone]:
    with fixture_folder(request, tmp_path_factory, "fresh") as folder:
        yield _fresh_clone(folder)


@pytest.fixture(scope="module")
def small_demo_clone(request, tmp_path_factory) -> Iterator[Clone]:
    """A second fresh clone, for the tests that render the demo set smaller (``SMALL_DEMO``): the first clone's
    ``cache/demo_gems`` keeps README's 60 photos a class whatever order the tests run in."""
    with fixture_folder(request, tmp_path_factory, "fresh_small_demo") as folder:
        yield _fresh_clone(folder)


def _fresh_clone(base: Path) -> Clone:
    root = base / "gem-lightning"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(root)], check=True)
    _copy_working_tree(root)
    if SHARED_DIR.exists():
        (base / "shared").symlink_to(SHARED_DIR)  # ../shared, as beside the real checkout
    if GEMSTONES_DIR.exists():
        (root / "data").mkdir()
        (root / "data" / "gemstones").symlink_to(GEMSTONES_DIR)  # "put the folders under data/gemstones/"
    assert not (root / "cache").exists() and not (root / "outputs" / "demo").exists()
    return Clone(root, base / "torch_home")


def _value(out: str, label: str) -> str:
    """The path a command printed after ``label: ``."""
    match = re.search(rf"^{re.escape(label)}: (\S+)", out, re.MULTILINE)
    assert match, f"no '{label}:' line in\n{out[-3000:]}"
    return match.group(1)


def _one_error_line(result: subprocess.CompletedProcess, status: int = 2) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == status, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _poll_json(url: str, ready, deadline_s: float, process: subprocess.Popen):
    """The JSON at ``url`` once ``ready(it)`` holds: a server that is up may still be loading what it serves
    (TensorBoard reads the event files after it answers)."""
    deadline = time.monotonic() + deadline_s
    while True:
        document = json.loads(_get(url, deadline_s, process))
        if ready(document):
            return document
        if time.monotonic() > deadline:
            return document  # the caller's assertion shows what was there
        time.sleep(0.5)


def _get(url: str, deadline_s: float, process: subprocess.Popen) -> bytes:
    """The body at ``url`` once the server answers (it is starting up), or fail with its output."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{url} never answered:\n{process.communicate()[0][-3000:]}")
            time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the server did not stop on SIGTERM")


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


def test_resume_a_killed_run(clone, demo):
    # Only the epochs are checked here: no calibration/report or label audit (test_demo_... checks those).
    overrides = "experiment=demo trainer.max_epochs=4 optim.lr=1e-2 evaluate=false label_audit=none"
    _resume(clone, overrides, _kill_after_epoch_1(clone, overrides), epochs=4)


# -- data-parallel training -----------------------------------------------------------------------------------

# 7 classes x 3 = 21 validation and 21 test images: an odd number, which Lightning's default distributed sampler
# would pad with a repeated image on one of the 2 processes, counting it twice.
# The demo set as small_demo_clone renders it: 17 photos a class, one size for every test there.
SMALL_DEMO = "data.demo.images_per_class=17"
DDP_SHRINK = (SMALL_DEMO, "data.max_classes=7", "data.image_size=32", "trainer.max_epochs=3")


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


# -- the Kaggle photos ---------------------------------------------------------------------------------------

KAGGLE_SHRINK = ("data.max_classes=3", "data.image_size=64", "trainer.max_epochs=1")


def _report_top1(run_dir: Path) -> float:
    """Top-1 on the test split as the run's evaluation report (evaluation/test/evaluation.json) counted it."""
    return json.loads((run_dir / "evaluation" / "test" / "evaluation.json").read_text())["summary"]["top1"]


# The recipes that compute rembg masks of every training square: two classes (u2netp takes about 0.5 s a photo
# on one core here).
MASKED_KAGGLE_SHRINK = ("data.max_classes=2", *KAGGLE_SHRINK[1:])


def _kaggle_run(clone, command: str, env: dict[str, str] | None = None, shrink=KAGGLE_SHRINK, **placeholders) -> dict:
    result = clone.run(command, *shrink, placeholders=placeholders, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = clone.root / _value(result.stdout, "run dir")
    report = json.loads((run_dir / "data_report.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    # One measurement, one number: the logged test/acc is what the run's evaluation report counted.
    assert metrics["test/acc"] == pytest.approx(_report_top1(run_dir), abs=1e-6) and "test/ece_calibrated" in metrics
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    return {"report": report, "metrics": metrics, "best_checkpoint": best, "output": result.stdout + result.stderr}


@needs_shared(GEMSTONES_DIR)
def test_kaggle_pooled(clone):
    run = _kaggle_run(clone, "python train.py model=efficientnet_lite0")
    assert run["report"]["split"]["mode"] == "pooled"


@needs_shared(GEMSTONES_DIR)
def test_kaggle_predefined(clone):
    run = _kaggle_run(clone, "python train.py model=efficientnet_lite0 data.split=predefined")
    assert run["report"]["split"]["mode"] == "predefined"


@needs_shared(GEMSTONES_DIR)
def test_kaggle_elsewhere(clone, tmp_path):
    # A flat copy of three classes elsewhere, none of them among the three the default folder would give
    # (Alexandrite, Almandine, Amazonite): a run that ignored data.root would train on other classes.
    elsewhere = tmp_path / "my gems"
    for name in ("Ruby", "Tanzanite", "Zircon"):
        (elsewhere / name).mkdir(parents=True)
        for photo in sorted((GEMSTONES_DIR / "train" / name).glob("*.jpg"))[:12]:
            shutil.copy(photo, elsewhere / name / photo.name)
    run = _kaggle_run(
        clone,
        "python train.py model=efficientnet_lite0 data.root=/path/to/gemstones",
        **{"/path/to/gemstones": shlex.quote(str(elsewhere))},
    )
    report = run["report"]
    assert (report["data_root"], report["layout"]) == (str(elsewhere), "flat")
    assert sorted(report["images_per_class"]) == ["Ruby", "Tanzanite", "Zircon"]
    assert sum(report["images"].values()) == 36


@needs_shared(GEMSTONES_DIR)
def test_best_cpu(clone):
    run = _kaggle_run(clone, "python train.py experiment=best_cpu")
    assert run["report"]["split"]["mode"] == "predefined"
    checkpoint = torch.load(clone.root / run["best_checkpoint"], map_location="cpu", weights_only=True)
    config = checkpoint["gem_lightning"]["config"]
    assert config["scheduler"]["_target_"] == "gem_lightning.models.lr_schedules.warmup_cosine"
    assert (config["model"]["backbone"], config["augment"]["name"]) == ("efficientnet_lite0", "colour_preserving")
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert {group["name"] for group in groups} == {"backbone", "head"}
    # The stem and three stages stay as pretrained: the optimiser holds only what trains.
    assert config["model"]["frozen_stages"] == 3
    assert "in eval mode at the start of training" not in run["output"]  # frozen on purpose: no warning
    trainable = sum(len(group["params"]) for group in groups)
    model = GemClassifier.from_checkpoint(clone.root / run["best_checkpoint"])
    stem = [model.backbone.conv_stem, model.backbone.bn1]
    frozen = [p for part in (*stem, *model.backbone.blocks[:3]) for p in part.parameters()]
    assert trainable == len(list(model.parameters())) - len(frozen)


@needs_shared(GEMSTONES_DIR)
@needs_shared(OTHER_SOURCES_DIR)
def test_best_cpu_with_your_own_photos(clone):
    # Six photos each of two of the three classes the shrunk run keeps, from another source than Kaggle's.
    shop = clone.root / "my_shop"
    for name in ("Alexandrite", "Almandine"):
        (shop / name).mkdir(parents=True)
        for photo in sorted((OTHER_SOURCES_DIR / "kaggle-style-extras" / name).glob("*.jpg"))[:6]:
            shutil.copy(photo, shop / name / photo.name)
    try:
        run = _kaggle_run(clone, "python train.py experiment=best_cpu data.extra_roots=[my_shop/]")
    finally:
        shutil.rmtree(shop)
    sources = run["report"]["sources"]
    assert list(sources) == ["gemstones", "my_shop"]
    assert sources["my_shop"]["images"] == {"train": 8, "val": 2, "test": 2}  # 4/1/1 of each class's 6
    run_dir = (clone.root / run["best_checkpoint"]).parent.parent
    parts = {
        source: json.loads((run_dir / "evaluation" / f"test-{source}" / "evaluation.json").read_text())["summary"]
        for source in sources
    }
    assert parts["my_shop"]["images"] == 2 and parts["gemstones"]["images"] == sources["gemstones"]["images"]["test"]
    assert "test photos of my_shop: 2" in run["output"]


def test_seed_report_names_the_missing_weights(clone):
    # This machine has no network: the download the run tries fails at once (a server that is reached is
    # tests/models/test_weights_download.py's), and the run stops with the offline line.
    started = time.monotonic()
    result = clone.run("python train.py experiment=seed_report")
    line = _one_error_line(result)
    assert line.startswith("error: pretrained weights for resnet18 could not be downloaded (")
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert f"copy resnet18-f37072fd.pth from {url} into {clone.torch_home / 'hub' / 'checkpoints'} " in line
    assert "model.pretrained=false" in line and "model=efficientnet_lite0" in line
    assert "scan" not in result.stderr and "fingerprinting" not in result.stderr  # before any data work
    assert time.monotonic() - started < 60


def test_gpus_1_says_what_is_missing(clone):
    result = clone.run("python train.py model=resnet18 trainer.gpus=1", *KAGGLE_SHRINK)
    if HAS_CUDA:  # trains where the weights can be downloaded; offline, the one line naming them
        assert result.returncode == 0 or "resnet18-f37072fd.pth" in _one_error_line(result), result.stderr[-3000:]
    else:
        assert "trainer.gpus=1 asks for 1 GPU(s) but this machine has 0" in _one_error_line(result)


def test_gpu_check(clone):
    command = (
        "python -m gem_lightning.cli.bench data_dir=data/gemstones && python train.py experiment=gpu_check "
        "data.root=data/gemstones"
    )
    bench, train = (part.strip() for part in command.split("&&"))
    assert bench in COMMAND_TESTS  # its first half is test_bench's command
    if not HAS_CUDA:
        assert "GPU" in _one_error_line(clone.run(train))
        return
    result = clone.run(train, "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]


# -- preparation with the real rembg model ------------------------------------------------------------------


@needs_shared(U2NET_DIR / "u2netp.onnx")
@needs_shared(GEMSTONES_DIR)
def test_prepare(clone):
    block = [c for c in readme_commands() if "u2netp" in c or c.startswith("export U2NET_HOME")]
    export, check, prepare, train = block
    name, value = export.removeprefix("export ").split("=")
    env = {name: value}  # relative to the clone, as README.md's block is
    shrink = ("data.max_classes=2",)

    result = clone.run(check, *shrink, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok: ") and not (clone.root / "cache" / "prepared").exists()

    result = clone.run(prepare, *shrink, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    cut_outs = list((clone.root / "cache" / "prepared").rglob("*.png"))
    classes = sorted(p.name for p in (GEMSTONES_DIR / "train").iterdir())[:2]
    photos = [p for split in ("train", "test") for c in classes for p in (GEMSTONES_DIR / split / c).iterdir()]
    images = len({file_sha256(p) for p in photos})  # one cut-out per distinct file content
    assert len(cut_outs) == images

    result = clone.run(train, *shrink, "data.image_size=64", "trainer.max_epochs=1", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((clone.root / _value(result.stdout, "run dir") / "data_report.json").read_text())
    assert report["background"]["summary"]["done"] == 0  # prepare did it all: train.py only read the cache
    assert report["background"]["summary"]["cached"] == images


def _u2net_home() -> dict[str, str]:
    """'with U2NET_HOME set as above': the variable test_prepare's README block exports."""
    export = next(c for c in readme_commands() if c.startswith("export U2NET_HOME"))
    name, value = export.removeprefix("export ").split("=")
    return {name: value}


@needs_shared(U2NET_DIR / "u2netp.onnx")
@needs_shared(GEMSTONES_DIR)
def test_robust_cpu(clone):
    run = _kaggle_run(clone, "python train.py experiment=robust_cpu", env=_u2net_home(), shrink=MASKED_KAGGLE_SHRINK)
    checkpoint = torch.load(clone.root / run["best_checkpoint"], map_location="cpu", weights_only=True)
    config = checkpoint["gem_lightning"]["config"]
    assert config["task_name"] == "robust_cpu" and config["augment"]["name"] == "colour_safe_auto"
    assert config["background_swap"]["probability"] == 0.5
    # Everything else is best_cpu's.
    assert config["model"]["frozen_stages"] == 3 and config["data"]["split"] == "predefined"
    assert config["scheduler"]["_target_"] == "gem_lightning.models.lr_schedules.warmup_cosine"
    assert "background swap: 50% of training photos" in run["output"]


@needs_shared(U2NET_DIR / "u2netp.onnx")
@needs_shared(GEMSTONES_DIR)
def test_framed_cpu(clone, tmp_path):
    run = _kaggle_run(clone, "python train.py experiment=framed_cpu", env=_u2net_home(), shrink=MASKED_KAGGLE_SHRINK)
    checkpoint = torch.load(clone.root / run["best_checkpoint"], map_location="cpu", weights_only=True)
    config = checkpoint["gem_lightning"]["config"]
    assert config["task_name"] == "framed_cpu" and config["model"]["frozen_stages"] == 3  # best_cpu otherwise
    assert (config["background"]["backend"]["model"], config["background"]["frame"]) == ("u2netp", "stone")
    # Every photo was cut out (none left as it was), and each cut-out is the square around its stone.
    # The clone's cache holds other tests' cut-outs too: the run's report names its own variant.
    variant = Path(run["report"]["background"]["cache"])
    assert run["report"]["background"]["settings"]["frame"] == "stone"
    records = {p: json.loads(p.read_text()) for p in variant.rglob("*.json")}
    summary = run["report"]["background"]["summary"]
    assert len(records) == summary["done"] + summary["cached"] > 0
    assert all(r["method"] == "rembg u2netp" and r["width"] == r["height"] for r in records.values()), records
    # A photo to identify is framed the same way: a table-top photo (960x540) becomes the square around its stone.
    photos = tmp_path / "my_photos"
    photos.mkdir()
    shutil.copy(next((OTHER_SOURCES_DIR / "tumbled-stones-in-frame" / "Amethyst").glob("*.jpg")), photos)
    result = clone.run(
        "python -m gem_lightning.cli.predict ckpt=<best checkpoint> input=my_photos/ output=predictions.json",
        placeholders={"<best checkpoint>": run["best_checkpoint"], "my_photos/": f"{photos}/"},
        env=_u2net_home(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (added,) = [json.loads(p.read_text()) for p in variant.rglob("*.json") if p not in records]
    assert added["method"] == "rembg u2netp" and added["width"] == added["height"], added


@needs_shared(U2NET_DIR / "u2netp.onnx")
@needs_shared(GEMSTONES_DIR)
def test_best_cpu_with_background_swap(clone):
    run = _kaggle_run(
        clone,
        "python train.py experiment=best_cpu background_swap=random",
        env=_u2net_home(),
        shrink=MASKED_KAGGLE_SHRINK,
    )
    assert (
        "background swap: 50% of training photos on plain/gradient/noise backgrounds (rembg u2netp masks)"
        in (run["output"])
    )
    checkpoint = torch.load(clone.root / run["best_checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["gem_lightning"]["config"]["background_swap"]["probability"] == 0.5
    # One mask per image of the run's split, at the training squares' side (9/7 of 64 px), cached.
    (masks,) = (clone.root / "cache" / "image_arrays").glob("*-mask-u2netp.npy")
    images = sum(run["report"]["images"].values())
    assert np.load(masks, mmap_mode="r").shape == (images, 82, 82)


# -- the benchmark -------------------------------------------------------------------------------------------


# User-typeable settings that shrink the benchmark to a few batches of 32 px images (its figures then say
# nothing about speed); the photos stay the ones README's data_dir= names.
BENCH_SHRINK = (
    "image_size=32",
    "batch_size=8",
    "warmup_batches=1",
    "timed_batches=2",
    "loader_batches=2",
    "head_epochs=2",
    # Loaders in the measuring processes themselves: starting loader processes in each of its fresh processes
    # cost about a minute here (README's demo run, as typed, loads with processes).
    "num_workers=0",
)


@needs_shared(GEMSTONES_DIR)
def test_bench(clone):
    result = clone.run("python -m gem_lightning.cli.bench data_dir=data/gemstones", *BENCH_SHRINK)
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted((clone.root / "outputs" / "bench").glob("*/bench.json"))
    assert len(written) == 1
    document = json.loads(written[0].read_text())
    # The Kaggle photos under data/gemstones, their train/ part, as README says.
    assert document["photos"] == str((clone.root / "data" / "gemstones" / "train").resolve())
    assert (document["image_size"], document["tiny"]) == (32, False)
    rows = document["rows"]
    measures = [row["measure"] for row in rows]
    assert measures == [
        "data loader, rotate/crop/flip",
        "data loader, no augmentation",
        "data loader, for augmentation on the GPU",
        "augmentation on the CPU",
        "training",
        "evaluation",
        "head-only epoch, cached features",
    ]
    for row in rows:
        assert row["ours"] > 0 and row["plain"] > 0, row
    assert rows[4]["plain_mb"] > 0 and rows[4]["ours_mb"] > 0  # training
    assert (written[0].parent / "bench.md").read_text().count("\n| ") == 1 + len(measures)  # header + rows
    assert all(measure in result.stdout for measure in measures)  # the printed table


# -- multirun ------------------------------------------------------------------------------------------------


def _summary(clone, result) -> list[dict]:
    import csv

    summary = clone.root / _value(result.stdout, "summary")
    assert summary.parent.parent == clone.root / "outputs" / "demo" / "multiruns"
    return list(csv.DictReader(summary.open()))


def test_multirun(clone):
    result = clone.run(
        "python train.py -m experiment=demo optim.lr=1e-3,3e-4 augment=seed,colour_preserving",
        "trainer.max_epochs=1",
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


def test_multirun_with_a_failing_job_lists_it_and_exits_1(clone):
    result = clone.run(
        "python train.py -m experiment=demo trainer.max_epochs=1 optim.lr=1e-3,-1", "evaluate=false", "label_audit=none"
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    rows = _summary(clone, result)
    assert rows[0]["status"] == "done"
    assert rows[1]["status"].startswith("failed: ") and "Invalid learning rate: -1" in rows[1]["status"]
    assert "error: 1 of 2 job(s) failed (job 1)" in result.stderr


def test_a_run_started_from_another_folder_uses_the_project_folders(clone, tmp_path):
    result = clone.run(
        f"python {clone.root / 'train.py'} experiment=demo",
        *("trainer.max_epochs=1", "test=false", "label_audit=none"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(_value(result.stdout, "run dir"))
    assert run_dir.is_absolute() and run_dir.parent == clone.root / "outputs" / "demo" / "runs"
    assert not list(tmp_path.iterdir())  # nothing written where the user happened to be


# -- Optuna sweeps -------------------------------------------------------------------------------------------

SWEEP_SHRINK = ("--n-trials", "2", "trainer.max_epochs=1")


@pytest.fixture(scope="module")
def demo_sweep(clone) -> Path:
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


def test_sweep_backbones(clone):
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
    line = _one_error_line(clone.run(command, *SWEEP_SHRINK))
    assert "trainer.gpus=1 asks for 1 GPU(s)" in line
    assert not (clone.root / "outputs" / "sweeps" / "train").exists()  # no study was started


def test_retrain_the_best_trial(clone, demo_sweep):
    result = clone.run(
        "python train.py --config-dir outputs/sweeps/<study> experiment=best",
        "trainer.max_epochs=1",
        placeholders={"<study>": "demo"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc" in result.stdout


def test_tensorboard_compares_trials(clone, demo_sweep):
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


def test_optuna_dashboard(clone, demo_sweep):
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


# -- on a SLURM cluster -------------------------------------------------------------------------------------

# Each job: one epoch of 12 demo photos a class at 32 px; augmented in the main process, so that a job's random
# crops do not depend on how many loader processes its cores allow.
# No calibration, report or label audit in these jobs: what they check is where jobs run and what they train
# (about 4 s a job here, 12 jobs in test_multirun_on_slurm alone).
CLUSTER_SHRINK = (
    SMALL_DEMO,
    "data.image_size=32",
    "trainer.max_epochs=1",
    "data.num_workers=0",
    "evaluate=false",
    "label_audit=none",
)
needs_slurm = pytest.mark.skipif(
    find_slurm() is not None and not os.environ.get("CI"),
    reason=f"SLURM is not installed ({find_slurm()} missing; Debian: apt-get install slurm-wlm munge; CI installs it)",
)


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """A single-node SLURM cluster for this module's tests: the one variable that points its clients at it."""
    with slurm_cluster() as env:
        yield {"SLURM_CONF": env["SLURM_CONF"]}


def _multirun_metrics(output: str, root: Path) -> dict[str, dict]:
    """Each job's metrics.json (seconds left out), by the overrides that differ, from a multirun's summary.csv."""
    import csv

    summary = root / _value(output, "summary")
    jobs = {}
    for row in csv.DictReader(summary.open()):
        recorded = json.loads((root / row["run_dir"] / "metrics.json").read_text())
        jobs[row["varied"]] = {"metrics": recorded["metrics"], "epochs": recorded["epochs"]}
        jobs[row["varied"]]["run_dir"] = root / row["run_dir"]
    return jobs


@needs_slurm
def test_multirun_on_slurm(small_demo_clone, slurm):
    clone = small_demo_clone
    command = (
        "python train.py -m hydra/launcher=submitit_slurm experiment=demo optim.lr=1e-3,3e-4 "
        "augment=seed,colour_preserving"
    )
    on_slurm = clone.run(command, *CLUSTER_SHRINK, env=slurm)
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    sweep_dir = (clone.root / _value(on_slurm.stdout, "summary")).parent
    # submitit's folder per job: <array id>_<index>, each with the job's output.
    submitted = [job for job in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d", job.name)]
    assert len(submitted) == 4 and all(list(job.glob("*_log.out")) for job in submitted)  # 4 SLURM jobs ran
    # The same multirun on this machine, one thread a job as SLURM gives a job of one core: the same numbers,
    # with Hydra's basic launcher (one job after another) and with submitit's local one (jobs side by side).
    slurm_jobs = _multirun_metrics(on_slurm.stdout, clone.root)
    assert len(slurm_jobs) == 4
    for launcher in ("", " hydra/launcher=submitit_local"):
        here_command = command.replace(" hydra/launcher=submitit_slurm", launcher)
        here = clone.run(here_command, *CLUSTER_SHRINK, env={"OMP_NUM_THREADS": "1"})
        assert here.returncode == 0, here.stderr[-3000:]
        local_jobs = _multirun_metrics(here.stdout, clone.root)
        assert sorted(slurm_jobs) == sorted(local_jobs)
        for varied, job in slurm_jobs.items():
            assert job["metrics"] == pytest.approx(local_jobs[varied]["metrics"], abs=1e-5), (launcher, varied)


@needs_slurm
def test_data_parallel_on_slurm(small_demo_clone, slurm):
    clone = small_demo_clone
    result = clone.run(
        "python train.py -m hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=2 trainer=ddp_cpu "
        "experiment=demo",
        *DDP_SHRINK[:-1], "trainer.max_epochs=2", "data.num_workers=0",
        env=slurm,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = (clone.root / _value(result.stdout, "summary")).parent
    (job,) = [job for job in (sweep_dir / ".submitit").iterdir() if job.name.isdigit()]  # one SLURM job...
    logs = sorted(job.glob("*_log.err"))
    assert len(logs) == 2  # ...of two tasks, the two processes of one run
    for rank, log in enumerate(logs):
        assert f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in log.read_text()
    (run,) = _multirun_metrics(result.stdout, clone.root).values()
    assert run["epochs"] == 2 and "test/ece_calibrated" in run["metrics"]
    assert run["metrics"]["test/acc"] == pytest.approx(_report_top1(run["run_dir"]), abs=1e-6)


requires_postgres = pytest.mark.skipif(
    find_postgres_bin() is None and not os.environ.get("CI"),
    reason="PostgreSQL's initdb/pg_ctl are not installed (Debian: apt-get install postgresql; CI installs it)",
)


@needs_slurm
@requires_postgres
def test_sweep_workers_as_a_slurm_array(small_demo_clone, slurm):
    clone = small_demo_clone
    import optuna

    from gem_lightning.sweeps.storage import storage_url

    with postgres_server() as url:
        result = clone.run(
            "python sweep.py experiment=demo --n-trials 20 --jobs 4 sweep/launcher=slurm "
            "--storage postgresql://user:password@db-host/optuna",
            *CLUSTER_SHRINK, "--n-trials", "4", "--jobs", "2", "--study-name", "on-slurm",
            placeholders={"postgresql://user:password@db-host/optuna": url},
            env=slurm,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        study = optuna.load_study(study_name="on-slurm", storage=str(storage_url(url, clone.root)))
        trials = study.trials  # read while the server runs
    assert "2 workers submitted as SLURM job array" in output and "finished trials: 4 of 4" in output
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    tasks = sorted((clone.root / "outputs" / "sweeps" / "on-slurm" / "slurm").glob("*_log.err"))  # the logs
    assert len(tasks) == 2  # one array, two tasks
    ran = [int(re.search(r"this worker ran (\d+) trial", task.read_text()).group(1)) for task in tasks]
    assert sum(ran) == 4, ran
    assert len({t.user_attrs["worker"] for t in trials}) == sum(n > 0 for n in ran)


@needs_slurm
@requires_postgres
def test_sigterm_to_a_slurm_sweep_cancels_its_array_and_the_sweep_resumes(small_demo_clone, slurm):
    clone = small_demo_clone
    import optuna
    from optuna.trial import TrialState

    from gem_lightning.sweeps.storage import storage_url

    command = (
        "python sweep.py experiment=demo --n-trials 20 --jobs 4 sweep/launcher=slurm "
        "--storage postgresql://user:password@db-host/optuna"
    )
    # As many trials as array tasks: both are interrupted, and the rerun has only their retries to train.
    shrink = (*CLUSTER_SHRINK, "trainer.max_epochs=8", "--n-trials", "2", "--jobs", "2", "--study-name", "cancelled")
    with postgres_server() as url:
        placeholders = {"postgresql://user:password@db-host/optuna": url}
        storage = str(storage_url(url, clone.root))
        supervisor = clone.start(command, *shrink, placeholders=placeholders, env=slurm)
        deadline = time.monotonic() + 300
        while True:  # both array tasks in the middle of a trial
            assert supervisor.poll() is None and time.monotonic() < deadline, supervisor.communicate()[0][-3000:]
            try:
                trials = optuna.load_study(study_name="cancelled", storage=storage).trials
            except KeyError:  # not created yet
                trials = []
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if len(running) == 2 and all(t.intermediate_values for t in running):
                break
            time.sleep(0.5)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=120) != 0
        deadline = time.monotonic() + 60
        while _slurm_jobs(slurm) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _slurm_jobs(slurm), "the array's tasks outlived the sweep that submitted them"
        trials = optuna.load_study(study_name="cancelled", storage=storage).trials
        interrupted = [t for t in trials if t.state == TrialState.FAIL]
        assert len(interrupted) == 2 and all("interrupted" in t.user_attrs["failed"] for t in interrupted)
        assert sum(t.state == TrialState.WAITING for t in trials) == 2  # both queued again

        again = clone.run(command, *shrink, placeholders=placeholders, env=slurm)  # the same command resumes
        assert again.returncode == 0, again.stderr[-3000:]
        trials = optuna.load_study(study_name="cancelled", storage=storage).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert {t.system_attrs.get("failed_trial") for t in trials} - {None} == {t.number for t in interrupted}


def _slurm_jobs(slurm: dict[str, str]) -> list[str]:
    listed = subprocess.run(
        ["squeue", "-h", "-o", "%i %T"], env={**os.environ, **slurm}, capture_output=True, text=True
    )
    return listed.stdout.split("\n")[:-1]


# -- last: every README command ran -------------------------------------------------------------------------


def test_every_readme_command_ran(request):
    """Runs last (file order): each README command that is not a set-up step was run by a test above, as
    shown; a compound ``a && b`` when each part was (a pip install part being set-up)."""
    module_tests = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    selected = {item.originalname for item in request.session.items if item.module.__name__ == __name__}
    if selected != module_tests:
        pytest.skip("only some of this module's tests were selected")

    def ran(command: str) -> bool:
        parts = [part.strip() for part in command.split("&&")]
        return _as_shown(command) in COMMANDS_RAN or (
            len(parts) > 1 and all(p.startswith("pip install") or _as_shown(p) in COMMANDS_RAN for p in parts)
        )

    not_run = [c for c, test in COMMAND_TESTS.items() if not test.startswith("set-up: ") and not ran(c)]
    assert not not_run, f"README commands no test ran as shown: {not_run}"
