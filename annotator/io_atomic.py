"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

Every writer here writes to a temporary file in the *same directory* as the target (so ``os.replace`` is a
rename on one file system), named ``.<target name>.<random>.tmp``, flushes and fsyncs it, then renames it over
the target. Parent directories are created. On any error the temporary file is removed and the target is left
as it was.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_text(d / "sub" / "a.txt", "hello\\n")
    >>> (d / "sub" / "a.txt").read_text()
    'hello\\n'
    >>> with atomic_writer(d / "b.txt") as f:
    ...     _ = f.write("streamed")
    >>> sorted(p.name for p in d.rglob("*"))
    ['a.txt', 'b.txt', 'sub']
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_writer", "temp_path_in"]


def temp_path_in(directory: str | os.PathLike, stem: str) -> Path:
    """Create an empty temporary file ``.<stem>.<random>.tmp`` in ``directory`` and return its path.

    The caller owns the file and must remove or rename it.
    """
    Path(directory).mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: Literal["w", "wb"] = "w") -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces ``path``, on an exception it is removed.

    Args:
        path: the target file. Its parent directories are created.
        mode: ``"w"`` (text, UTF-8, ``\\n`` line endings) or ``"wb"`` (bytes).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {target}: it is a directory; pass a file path")
    tmp = temp_path_in(target.parent, target.name)
    try:
        kwargs = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line endings) to ``path`` atomically."""
    with atomic_writer(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path, "wb") as f:
        f.write(data)
