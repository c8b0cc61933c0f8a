"""Where an Optuna study lives and how the workers sharing it take turns."""

# By default a study is a SQLite file in its sweep folder (``outputs/sweeps/<study>/study.db``): one machine,
# and a killed sweep resumes by running the same command again. A database URL (PostgreSQL, MySQL) lets
# ``python sweep.py`` workers on many machines share one study.
#
# Every worker sends a heartbeat while its trial runs; a trial whose worker died (killed, machine lost) goes
# stale after ``grace_period`` seconds, is marked failed by the next worker that looks, and is queued again
# with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``), so the study still ends with the
# requested number of finished trials.
#
# Taking a trial is done under a lock shared by all workers of the database (a lock file beside a SQLite
# study, an advisory lock on PostgreSQL/MySQL): counting the finished and running trials and asking for the
# next one is then one step, so workers never start more trials than ``n_trials`` between them.

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import NullPool

from gem_lightning.errors import GemLightningError
from gem_lightning.files.locks import exclusive_lock

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"


def storage_url(configured: str | None, sweep_dir: Path) -> URL:
    """The study's database: ``configured`` or the SQLite file in the sweep folder."""
    text = configured or f"sqlite:///{(Path(sweep_dir) / STUDY_FILE).resolve()}"
    try:
        url = make_url(text)
    except ArgumentError:
        raise GemLightningError(
            f"sweep.storage={text!r} is not a database URL: use e.g. postgresql://user:password@host:5432/db"
        ) from None
    if url.drivername == "postgresql":
        # SQLAlchemy's default PostgreSQL driver is psycopg2; the project installs psycopg 3 ([postgres] extra).
        url = url.set(drivername="postgresql+psycopg")
    return url


def shown(url: URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return url.render_as_string(hide_password=True)


@contextmanager
def quiet_experimental() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning for heartbeats and retries: experimental since Optuna 2.8/2.9 and
    unchanged since, the warning would otherwise repeat on every trial of every worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_storage(url: URL, heartbeat_interval: int, grace_period: int, max_retry: int) -> RDBStorage:
    if url.get_backend_name() == "sqlite":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # Several worker processes write one file; wait for each other instead of "database is locked".
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in (1, 2):
        try:
            with quiet_experimental():
                return RDBStorage(
                    url.render_as_string(hide_password=False),
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=retry_callback(max_retry),
                )
        except (ImportError, NoSuchModuleError) as error:
            raise GemLightningError(
                f"sweep.storage={shown(url)}: the database driver is missing ({error}); for PostgreSQL run "
                "pip install -e '.[postgres]'"
            ) from None
        except OperationalError as error:
            # Seen once in the --jobs 2 test on a fresh SQLite file, lock or not: the second worker's table
            # creation met "table ... already exists" from the first. The tables are there now; open again.
            if attempt == 1 and "already exists" in str(error):
                log.info("the study tables appeared while this worker created them; opening the study again")
                continue
            raise _unreachable(url, error) from None
    raise AssertionError("unreachable: the second attempt returns or raises")


def _unreachable(url: URL, error: OperationalError) -> GemLightningError:
    reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
    return GemLightningError(f"sweep.storage={shown(url)}: cannot open the study database: {reason}")


def retry_callback(max_retry: int) -> RetryHeartbeatStaleTrialCallback:
    """Queues a failed trial again with its parameters and its reported epochs (a retry resumes it)."""
    with quiet_experimental():
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)


@contextmanager
def one_worker_at_a_time(url: URL) -> Iterator[None]:
    """One worker at a time, across processes and machines, on the database at ``url``.

    Held while opening the storage (workers starting together on a fresh database would otherwise race to
    create Optuna's tables) and while counting trials and asking for the next one. Both take milliseconds.
    """
    backend = url.get_backend_name()
    if backend == "sqlite":
        with exclusive_lock(Path(f"{url.database}.lock")) as held:
            if not held:
                log.warning("no file locking here: concurrent workers may overshoot n_trials by a trial or two")
            yield
        return
    if backend in ("postgresql", "mysql"):
        # A dedicated connection: a session-level advisory lock lives as long as the connection holding it.
        engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        key = "gem_lightning sweep workers"
        lock, unlock, name = (
            ("SELECT pg_advisory_lock(:name)", "SELECT pg_advisory_unlock(:name)", zlib.crc32(key.encode()))
            if backend == "postgresql"
            else ("SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)", key[:64])
        )
        try:
            connection = engine.connect()
        except OperationalError as error:
            engine.dispose()
            raise _unreachable(url, error) from None
        try:
            with connection:
                connection.execute(sqlalchemy.text(lock), {"name": name})
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text(unlock), {"name": name})
        finally:
            engine.dispose()
        return
    log.warning("no advisory lock for %s: concurrent workers may overshoot n_trials by a trial or two", backend)
    yield


def load_study(
    storage: RDBStorage, study_name: str, direction: str, identity: dict, pruner: optuna.pruners.BasePruner
) -> optuna.Study:
    """Create the study or load it, refusing to continue one that was started with other settings.

    ``identity`` holds what makes trials comparable (the train.py overrides, the search space, the metric);
    resuming with another of any of them would mix incomparable trials in one ranking.
    """
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction=direction, pruner=pruner, load_if_exists=True
    )
    stored = study.user_attrs.get("gem_lightning")
    if stored is None:
        study.set_user_attr("gem_lightning", identity)
    elif stored != identity:
        changed = sorted(key for key in identity if stored.get(key) != identity[key])
        details = "; ".join(f"{key}: was {stored.get(key)!r}, now {identity[key]!r}" for key in changed)
        raise GemLightningError(
            f"study {study_name!r} was started with other settings ({details}). Resume it with the same command "
            "(paths, devices and loader settings may differ), or start a new study with --study-name NEW."
        )
    return study
