"""Write files so that a reader (or a crash) never sees a half-written one: temp file + rename.

The file gets the permissions any new file of the user's gets (0666 less the umask), not the temp file's
private 0600: a run's checkpoints, metrics and reports are meant to be read by the user's team and tools.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _user_file_mode() -> int:
    """0666 less the process umask (read without changing it for longer than the call)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step; the temp file sits beside it so rename stays atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
