"""The writers' lock: one pithcrawl process writes an archive at a time.

Owns the advisory `flock` on `DB.lock` beside the database, and the message naming the
holder when it is taken. It knows nothing of SQLite.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pithcrawl.errors import StoreError, StoreLocked


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


class WriterLock:
    """An exclusive, non-blocking `flock` on `DB.lock`: one writer process per archive.

    flock locks belong to the open file description, so a second acquisition fails even
    from the same process, and the kernel drops the lock when the process dies (a crash
    leaves no stale lock). The file holds the holder's pid, for the error message only.
    The file is never deleted: unlinking a lock file races with its next opener.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, db: Path) -> WriterLock:
        path = lock_path(db)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(f"cannot create the lock file {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            raise StoreLocked(
                f"another pithcrawl is using {db} (pid {holder}): a SQLite archive has one"
                " writer at a time (nodes that crawl together share a PostgreSQL archive:"
                " docs/scale-out.md)"
            ) from e
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise StoreError(f"cannot write the lock file {path}: {e.strerror or e}") from e
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor releases the flock


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"
