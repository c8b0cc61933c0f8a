"""A throwaway PostgreSQL server on loopback for the tests: Debian's postgresql package, a fresh data folder.

Nothing is mocked: initdb makes a cluster in a temporary folder, pg_ctl starts it on a free port on
127.0.0.1 with trust authentication, and stopping it removes everything. Run as root (as CI is), the
server runs as the ``postgres`` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def find_postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def postgres_server(database: str = "optuna") -> Iterator[str]:
    """Start a server, create ``database``, yield its SQLAlchemy URL, stop and delete the server."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("initdb/pg_ctl not found: install Debian's postgresql package")
    as_root = os.geteuid() == 0
    runner = ["runuser", "-u", "postgres", "--"] if as_root else []
    folder = Path(tempfile.mkdtemp(prefix="gem-lightning-pg-"))
    data_dir, socket_dir = folder / "data", folder / "socket"
    socket_dir.mkdir()
    if as_root:
        owner = pwd.getpwnam("postgres")
        for path in (folder, socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    pg_ctl = [*runner, str(bin_dir / "pg_ctl"), "-D", str(data_dir)]
    quiet = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    try:
        subprocess.run(
            [*runner, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            **quiet,
        )
        options = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*pg_ctl, "-o", options, "-l", str(folder / "server.log"), "-w", "start"], **quiet)
        try:
            import psycopg

            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{database}"')
            yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], check=False, capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
