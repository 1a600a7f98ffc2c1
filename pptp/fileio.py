"""Files that survive a crash: write to a temporary file beside the target, fsync, rename.

Nothing finished is lost when the process dies. A reader of ``path`` sees either the
old content or the new, never half a file: the data goes to a temporary file in the same folder
(the rename must not cross file systems), is flushed and fsynced, then ``os.replace`` renames it
over ``path`` (atomic on POSIX and Windows), and the folder is fsynced so that the rename itself is
on disk. A failure on the way removes the temporary file and re-raises.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, data: bytes | str, *, encoding: str = "utf-8") -> Path:
    """Replace ``path``'s content with ``data`` atomically and durably; returns ``path``.

    ``str`` data is encoded with ``encoding``. The parent folder is created when missing. The
    temporary file is ``.<name>.<random>.tmp`` beside ``path``; a crash can leave one behind, never
    a partial ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode(encoding) if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable. Not possible on every OS (Windows cannot open a
    folder), and the data itself is already on disk, so a failure here is ignored."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
