"""Writing files into a directory the operator named, never through a link planted in it.

`evidence --out DIR --force` writes into a directory that already holds files, which
someone else may have been able to write to (a shared /tmp, a directory unpacked from an
archive). A symbolic link there named like one of our files (`summary.json`,
`documents`) would have had us overwrite whatever it points to. So every file is written
through the directory's descriptor: subdirectories are opened with `O_NOFOLLOW`, each
file is created under a fresh name with `O_EXCL | O_NOFOLLOW` and then renamed over its
final name (a rename replaces a link itself, never its target), and read back the same
way. `DIR` itself is the operator's choice, link or not.

Owns `OutDir`; raises `OperationalError` naming the path for anything it refuses.
"""

from __future__ import annotations

import os
import secrets
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from pithcrawl.errors import OperationalError

_READ = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class OutDir:
    """An open directory to write files into; use as a context manager."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def open(cls, path: Path) -> OutDir:
        """`path` (created if missing, with its parents)."""
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY))

    def __enter__(self) -> OutDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        os.close(self._fd)

    def subdir(self, name: str) -> OutDir:
        """The directory `name` in this one (created if missing); a link is refused."""
        with suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=self._fd)
        try:
            fd = os.open(name, _READ | os.O_DIRECTORY, dir_fd=self._fd)
        except OSError as e:
            raise OperationalError(
                f"{self.path / name}: not a directory of its own (a symbolic link, or a"
                f" file): refusing to write through it ({e.strerror or e})"
            ) from None
        return OutDir(self.path / name, fd)

    def write(self, name: str, data: bytes) -> None:
        """Put `data` at `name`: written under a new name, then renamed over it."""
        temporary = f".{name}.{secrets.token_hex(8)}.part"
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
            0o644,
            dir_fd=self._fd,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        try:
            os.replace(temporary, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        except OSError:
            os.unlink(temporary, dir_fd=self._fd)
            raise

    def read(self, name: str) -> bytes:
        """The bytes at `name`, not through a link."""
        fd = os.open(name, _READ, dir_fd=self._fd)
        try:
            parts = []
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        finally:
            os.close(fd)
