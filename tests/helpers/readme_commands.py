"""README.md's commands and the fresh clone they run in, shared by the ``tests/test_readme_*commands.py`` modules.

The commands are read from README.md's ```bash blocks; ``COMMAND_TESTS`` names the test of each (in one of those
modules). Each test runs its command in a subprocess from a fresh clone's root, with no ``paths.*``, ``hydra.*`` or
cache overrides: only overrides a user could type too are appended, to shrink the work (``trainer.max_epochs=1``,
``data.image_size=64``, ``data.max_classes=2``, ``--n-trials 2``, ``port=``). The clone sits beside a ``shared``
link to ../shared, and its ``data/gemstones`` links the Kaggle photos, as README.md tells a user to lay them out.
The modules are several so that pytest-xdist can run them side by side; each ends by checking that the commands
its tests own were run as shown (``check_every_command_of_the_module_ran``).
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
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers.workplace import GEMSTONES_DIR, REPO_ROOT, SHARED_DIR

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


# The modules whose tests ``COMMAND_TESTS`` names.
README_TEST_MODULES = (
    "tests.test_readme_commands",
    "tests.test_readme_kaggle_commands",
    "tests.test_readme_cluster_commands",
)


# Each command the tests ran in this process, as README.md shows it (before placeholders are filled and settings
# appended); each module's last test checks that the README commands its tests own are among them.
COMMANDS_RAN: set[str] = set()


def check_every_command_of_the_module_ran(request: pytest.FixtureRequest) -> None:
    """The body of each README module's last test: every README command whose test is in ``request.module``
    was run by it, as shown. Skips when only some of the module's tests were selected."""
    module_tests = {name for name, obj in vars(request.module).items() if name.startswith("test_") and callable(obj)}
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    if selected != module_tests:
        pytest.skip("only some of this module's tests were selected")
    not_run = commands_not_run(module_tests)
    assert not not_run, f"README commands no test ran as shown: {not_run}"


def commands_not_run(module_tests: set[str]) -> list[str]:
    """The README commands whose test is one of ``module_tests`` and that no test ran as shown; a compound
    ``a && b`` counts as run when each part was (a pip install part being set-up)."""

    def ran(command: str) -> bool:
        parts = [part.strip() for part in command.split("&&")]
        return _as_shown(command) in COMMANDS_RAN or (
            len(parts) > 1 and all(p.startswith("pip install") or _as_shown(p) in COMMANDS_RAN for p in parts)
        )

    return [c for c, test in COMMAND_TESTS.items() if test in module_tests and not ran(c)]


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


def fresh_clone(base: Path) -> Clone:
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


# The demo set as small_demo_clone renders it: 17 photos a class, one size for every test there.
SMALL_DEMO = "data.demo.images_per_class=17"
# 7 classes x 3 = 21 validation and 21 test images: an odd number, which Lightning's default distributed sampler
# would pad with a repeated image on one of the 2 processes, counting it twice.
DDP_SHRINK = (SMALL_DEMO, "data.max_classes=7", "data.image_size=32", "trainer.max_epochs=3")


def _report_top1(run_dir: Path) -> float:
    """Top-1 on the test split as the run's evaluation report (evaluation/test/evaluation.json) counted it."""
    return json.loads((run_dir / "evaluation" / "test" / "evaluation.json").read_text())["summary"]["top1"]
