"""Reading a file a user handed in: regular files only, refused unopened otherwise, with a size limit.

Every reader of a user file (points JSON, COCO / YOLO prompt labels, ground truth, config YAML) goes through
:func:`read_user_bytes` / :func:`read_user_text`: ``os.stat`` first, and a named pipe, socket, device or folder
is refused *before* any ``open`` (opening a FIFO for reading blocks until a writer appears); the file is then
opened with ``O_NONBLOCK`` and checked again with ``fstat`` on the descriptor (a file swapped for a FIFO
between the two calls is still not read), and at most ``max_bytes`` are read.

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.txt"); _ = open(p, "w").write("0 .5 .5 .1 .1\\n")
    >>> read_user_text(p, max_bytes=1024)
    '0 .5 .5 .1 .1\\n'
    >>> os.mkfifo(os.path.join(d, "b.txt"))
    >>> read_user_text(os.path.join(d, "b.txt"), max_bytes=1024)
    Traceback (most recent call last):
    ...
    annotator.errors.InputFileError: .../b.txt: expected a regular file, found a named pipe
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from annotator.errors import InputFileError

#: size limits (bytes) per kind of user file; a larger file is refused before it is read
MAX_JSON_BYTES = 4 << 30  # a COCO file (LVIS train is ~1.1 GB)
MAX_POINTS_BYTES = 256 << 20
MAX_LABEL_TXT_BYTES = 16 << 20  # one YOLO label file
MAX_YAML_BYTES = 1 << 20  # a config or data.yaml


def special_kind(mode: int) -> str | None:
    """What a non-regular ``st_mode`` is, in words (``"a named pipe"``...); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, name in (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_user_bytes(path: str | os.PathLike, *, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (links followed), never blocking, at most ``max_bytes``.

    Raises:
        InputFileError: not found / unreadable, not a regular file (refused unopened), or larger than
            ``max_bytes``.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise InputFileError(path, "", "a readable file", e.strerror or type(e).__name__) from None
    kind = special_kind(st.st_mode)
    if kind is not None:
        raise InputFileError(path, "", "a regular file", kind)
    if st.st_size > max_bytes:
        raise InputFileError(path, "", f"a file of at most {max_bytes:,} bytes", f"{st.st_size:,} bytes")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise InputFileError(path, "", "a readable file", e.strerror or type(e).__name__) from None
    try:
        kind = special_kind(os.fstat(fd).st_mode)  # swapped after the stat: still not read
        if kind is not None:
            raise InputFileError(path, "", "a regular file", kind)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise InputFileError(path, "", "a readable file", e.strerror or type(e).__name__) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputFileError(path, "", f"a file of at most {max_bytes:,} bytes", "a file that grew while read")
    return data


def read_user_text(path: str | os.PathLike, *, max_bytes: int) -> str:
    """:func:`read_user_bytes` decoded as UTF-8 (a BOM is dropped); a decoding error is an InputFileError."""
    data = read_user_bytes(path, max_bytes=max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputFileError(path, f"byte {e.start}", "UTF-8 text", f"byte {data[e.start]:#04x}") from None


def user_files(folder: Path, suffix: str) -> Iterator[Path]:
    """The files named ``*<suffix>`` under ``folder`` (recursive, sorted), each checked with ``lstat``/``stat``
    before it is opened: a special file with that suffix (a FIFO named ``a.txt``) is an InputFileError."""
    for p in sorted(Path(folder).rglob(f"*{suffix}")):
        try:
            mode = os.stat(p).st_mode
        except OSError as e:
            raise InputFileError(p, "", "a readable file", e.strerror or type(e).__name__) from None
        if stat.S_ISDIR(mode):
            continue  # a folder named x.txt holds nothing of ours
        kind = special_kind(mode)
        if kind is not None:
            raise InputFileError(p, "", "a regular file", kind)
        yield p


T = TypeVar("T")


def cached_by_stat(load: Callable[[object], T]) -> Callable[[object], T]:
    """``load(path)`` remembered for the file's identity (device, inode, size, mtime): the run's check before
    any model loads and the stage that reads the same file later parse it once. Holds the last 4 files."""
    memo: dict[tuple, T] = {}

    def wrapper(path):
        try:
            st = os.stat(path)
        except OSError:
            return load(path)  # the loader says what is wrong, in one line
        if not stat.S_ISREG(st.st_mode):
            return load(path)
        key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in memo:
            if len(memo) >= 4:
                memo.pop(next(iter(memo)))
            memo[key] = load(path)
        return memo[key]

    wrapper.__doc__, wrapper.__name__ = load.__doc__, load.__name__
    return wrapper
