"""One run per output folder at a time: an advisory ``flock`` on ``<output_dir>/.annotator/lock``.

The lock file holds the owner's PID. The OS releases the lock when the process dies, even by ``kill -9``,
so a crashed run never blocks the next one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from annotator.errors import AnnotatorError


class OutputLockedError(AnnotatorError):
    """Another run holds the output folder."""


def describe_holder(lock_text: str) -> str:
    """Who holds the lock, from the PID line the holder wrote: its command line when it is alive here.

    Example:
        >>> describe_holder("")
        'another process holds its lock (no PID recorded); wait for it to finish or stop it'
    """
    pid_s, _, since = lock_text.partition(" since ")
    if not pid_s.strip().isdigit():
        return "another process holds its lock (no PID recorded); wait for it to finish or stop it"
    pid = int(pid_s)
    cmd = ""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        cmd = " ".join(raw.decode(errors="replace").replace("\0", " ").split())  # one line, whatever argv holds
    except OSError:
        pass
    alive = bool(cmd)
    if not alive:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    when = f" since {since.strip()}" if since.strip() else ""
    if alive:
        what = f" ({cmd[:160]})" if cmd else ""
        return f"PID {pid}{what} is running on it{when}; wait for it to finish or stop it (kill {pid})"
    return (
        f"its lock is held by a process other than the recorded PID {pid} (which has exited), e.g. a worker "
        f"it started; find it with 'fuser -v <output>/.annotator/lock' and stop it"
    )


class OutputLock:
    """Context manager holding the output folder's lock.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with OutputLock(d):
        ...     pass
    """

    def __init__(self, output_dir: Path, *, read_only_ok: bool = False) -> None:
        """``read_only_ok``: a reader (export, review, eval) of an output folder it can not write takes a shared
        lock on the existing lock file instead (still refused while a run holds it); none when there is none."""
        self.path = Path(output_dir) / ".annotator" / "lock"
        self.read_only_ok = read_only_ok
        self._fd: int | None = None

    def acquire(self) -> None:
        from annotator.errors import OutputError, describe_os_error
        from annotator.io_atomic import ensure_real_dir
        from annotator.path_guard import check_write

        out = self.path.parent.parent
        ensure_real_dir(self.path.parent, out)
        check_write(self.path, "create")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as e:
            if self.read_only_ok and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                self._acquire_shared(out)
                return
            raise OutputError(f"cannot open the output folder's lock {describe_os_error(e, self.path)}") from None
        _flock_or_refuse(fd, fcntl.LOCK_EX, out)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        except OSError as e:
            os.close(fd)
            raise OutputError(f"cannot write the output folder's lock {describe_os_error(e, self.path)}") from None
        self._fd = fd

    def _acquire_shared(self, out: Path) -> None:
        """A shared lock through a read-only descriptor (a folder this process can not write)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # never locked, and no run can create the lock here now
        except OSError as e:
            from annotator.errors import OutputError, describe_os_error

            raise OutputError(f"cannot open the output folder's lock {describe_os_error(e, self.path)}") from None
        _flock_or_refuse(fd, fcntl.LOCK_SH, out)
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


def _flock_or_refuse(fd: int, mode: int, out: Path) -> None:
    """``flock(fd, mode)`` without waiting; when another process holds the lock, close ``fd`` and raise
    :class:`OutputLockedError` naming the holder recorded in the lock file."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = os.read(fd, 200).decode(errors="replace").strip()
        finally:
            os.close(fd)
        raise OutputLockedError(f"output folder {out} is in use: {describe_holder(owner)}") from None
