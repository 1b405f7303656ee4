"""One run per output folder at a time: an advisory ``flock`` on ``<output_dir>/.annotator/lock``.

The lock file holds the owner's PID. The OS releases the lock when the process dies, even by ``kill -9``,
so a crashed run never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from annotator.errors import AnnotatorError


class OutputLockedError(AnnotatorError):
    """Another run holds the output folder."""


class OutputLock:
    """Context manager holding the output folder's lock.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with OutputLock(d):
        ...     pass
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / ".annotator" / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise OutputLockedError(
                f"output folder {self.path.parent.parent} is locked by PID {owner} (another annotator run); "
                f"wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
