"""Write files so that a reader (or a crash) never sees a half-written one: temp file + rename.

The file gets the permissions any new file of the user's gets (0666 less the umask), not the temp file's
private 0600: a run's checkpoints, metrics and reports are meant to be read by the user's team and tools.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gem_lightning.errors import GemLightningError


def _user_file_mode() -> int:
    """0666 less the process umask (read without changing it for longer than the call)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _unchanged(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step; the temp file sits beside it so rename stays atomic.

    A file that already holds ``data`` is left alone, so a complete cache on read-only storage still serves
    a run. A folder that cannot be written is one GemLightningError naming it.
    """
    path = Path(path)
    if _unchanged(path, data):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:  # no permission, read-only storage, a file where a folder should be
        raise GemLightningError(
            f"cannot write {path} ({error.strerror or error}): make {path.parent} writable, or choose another folder "
            "(paths.cache_dir= for caches, paths.log_dir= for run folders)"
        ) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _user_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


def folder_is_writable(folder: Path, setting: str) -> bool:
    """Whether files can be written in ``folder`` (made if missing); False for an existing read-only one.

    A folder that does not exist and cannot be made is one GemLightningError naming ``setting``: nothing could
    ever be cached there. An existing read-only one may still hold everything a run needs.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GemLightningError(
            f"cannot make the folder {folder} ({error.strerror or error}): set {setting}= to a writable folder"
        ) from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
