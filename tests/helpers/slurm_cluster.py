"""A throwaway single-node SLURM cluster for the tests: Debian's slurm-wlm and munge, a fresh state folder.

Nothing is mocked: munged gets a new key and its own socket, slurmctld and slurmd run this machine as the one
node of a partition ``debug`` on free loopback ports, and ``SLURM_CONF`` in the yielded environment points
sbatch, squeue and submitit at it. Stopping it cancels what is left, stops the daemons and deletes the folder.
The daemons run as the user running the tests (root in CI; slurmd then starts jobs as root, as on a node).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


def find_slurm() -> str | None:
    """None when every daemon and client is installed; else what is missing, for the skip reason."""
    missing = [name for name in (*DAEMONS, "sbatch", "squeue", "sinfo", "scancel") if not _which(name)]
    return ", ".join(missing) or None


def _which(name: str) -> str | None:
    # The daemons live in /usr/sbin, which a non-root PATH may leave out.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_conf(folder: Path, node: str, cpus: int) -> str:
    user = getpass.getuser()
    return f"""\
ClusterName=gemtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={folder}/munge/munge.socket
CredType=cred/munge
SlurmUser={user}
SlurmdUser={user}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=10
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm_cluster() -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd; yield the environment that reaches them; stop and delete them."""
    missing = find_slurm()
    if missing:
        raise FileNotFoundError(f"{missing} not found: install Debian's slurm-wlm and munge packages")
    folder = Path(tempfile.mkdtemp(prefix="gem-lightning-slurm-"))
    folder.chmod(0o755)  # munged wants its socket's folders searchable by every user, its clients
    for name in ("munge", "state", "spool"):
        (folder / name).mkdir(mode=0o755)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, node, os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    munge = folder / "munge"
    started = []
    try:
        subprocess.run(
            [_which("munged"), f"--key-file={key}", f"--socket={munge}/munge.socket", f"--pid-file={munge}/pid",
             f"--log-file={munge}/log", f"--seed-file={munge}/seed"],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
        started.append(munge / "pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([_which(daemon), "-f", str(conf)], check=True, env=env, capture_output=True)
            started.append(folder / f"{daemon}.pid")
        _wait_until_idle(env, folder)
        yield env
    finally:
        subprocess.run([_which("scancel"), "--full", "--user", getpass.getuser()], env=env, capture_output=True)
        for pid_file in reversed(started):
            _stop(pid_file)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_idle(env: dict[str, str], folder: Path, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    state = ""
    while time.monotonic() < deadline:
        listed = subprocess.run([_which("sinfo"), "-h", "-o", "%T"], env=env, capture_output=True, text=True)
        state = listed.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.5)
    logs = "\n".join(p.read_text()[-1500:] for p in (folder / "slurmctld.log", folder / "slurmd.log") if p.exists())
    raise RuntimeError(f"the test cluster's node never became idle (state {state!r}):\n{logs}")


def _stop(pid_file: Path, timeout_s: float = 30) -> None:
    """SIGTERM the daemon whose pid ``pid_file`` holds and wait for it to exit."""
    for _ in range(20):  # a daemon writes its pid file just after it forks
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.1)
    else:
        return
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
