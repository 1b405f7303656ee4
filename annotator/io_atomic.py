"""Atomic, link-safe, idempotent file writes into the output folder.

* **Atomic**: every writer writes a temporary file in the *same directory* as the target (so ``os.replace`` is
  a rename on one file system), flushes and fsyncs it, then renames it over the target. A reader sees the old
  file or the complete new one, never a partial file; on any error the temporary file is removed and the
  target is left as it was.
* **Recognisable temporary files**: they are named ``.annotator-XXXXXXXX.tmp`` (8 random ``[a-z0-9_]``),
  whatever the target's name, so a target name of any legal length works and a killed run's leftovers are
  told apart from user files by :func:`is_own_temp_name` alone.
* **Permissions as other tools**: new files get ``0o666 & ~umask`` (``mkstemp`` alone would give ``0o600``).
* **Idempotent**: a target whose bytes would not change is not touched (same bytes, same mtime), so a no-op
  re-run does not make sync tools re-upload anything.
* **Never through a link**: with ``root=``, every folder between ``root`` and the target must be a real
  folder (created when missing); a symbolic link there raises :class:`~annotator.errors.OutputError`. A target
  that is itself a link is replaced by the new file, never written through.
* **Never into an input**: every create, replace and delete first calls
  :func:`annotator.path_guard.check_write` (refused inside an input tree, or outside the registered output).
* **Errors**: an ``OSError`` (disk full, read-only, permission denied) becomes one
  :class:`~annotator.errors.OutputError` line naming the path and the cause.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_text(d / "sub" / "a.txt", "hello\\n", root=d)
    True
    >>> atomic_write_text(d / "sub" / "a.txt", "hello\\n", root=d)  # same bytes: untouched
    False
    >>> with atomic_writer(d / "b.txt") as f:
    ...     _ = f.write("streamed")
    >>> sorted(p.name for p in d.rglob("*"))
    ['a.txt', 'b.txt', 'sub']
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import re
import secrets
import stat
import string
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

from annotator.errors import OutputError, describe_os_error
from annotator.path_guard import check_write

__all__ = [
    "atomic_symlink",
    "atomic_write_bytes",
    "atomic_write_text",
    "commit_staged",
    "stage_bytes",
    "atomic_writer",
    "ensure_real_dir",
    "is_own_temp_name",
    "remove_file",
    "temp_path_in",
]

TEMP_PREFIX = ".annotator-"
TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\.annotator-[a-z0-9_]{8}\.tmp$")
_ALPHABET = string.ascii_lowercase + string.digits + "_"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: mode of every new file: what ``open()`` would give under the process umask.
FILE_MODE = 0o666 & ~_current_umask()


def is_own_temp_name(name: str) -> bool:
    """True for the temporary-file names this module makes (and only those).

    Example:
        >>> is_own_temp_name(".annotator-ab12cd_9.tmp"), is_own_temp_name(".notes.tmp")
        (True, False)
    """
    return bool(_TEMP_RE.match(name))


def _random_temp_name() -> str:
    return TEMP_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(8)) + TEMP_SUFFIX


def _output_error(e: OSError, path: object) -> OutputError:
    return OutputError(f"cannot write {describe_os_error(e, path)}")


def ensure_real_dir(directory: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Create ``directory`` (and its parents) and return it; below ``root`` no component may be a symlink.

    Args:
        directory: the folder to create.
        root: the output folder. Components *below* it are checked (``root`` itself may be a link the user chose).

    Raises:
        OutputError: a component below ``root`` is a symbolic link or not a folder, or a folder can't be created.
    """
    d = Path(directory)
    try:
        if root is None:
            check_write(d, "mkdir")
            d.mkdir(parents=True, exist_ok=True)
            return d
        r = Path(root)
        rel = d.relative_to(r)
        check_write(r, "mkdir")
        r.mkdir(parents=True, exist_ok=True)
        cur = r
        for part in rel.parts:
            cur = cur / part
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                check_write(cur, "mkdir")  # its parent is a real folder below root (checked just before)
                try:
                    os.mkdir(cur)
                except FileExistsError:
                    pass
                st = os.lstat(cur)
            if stat.S_ISLNK(st.st_mode):
                raise OutputError(
                    f"refusing to write through {cur}: it is a symbolic link inside the output folder {r} "
                    f"(to {os.readlink(cur)}); replace it with a real folder"
                )
            if not stat.S_ISDIR(st.st_mode):
                raise OutputError(f"cannot write into {cur}: it exists and is not a folder; move it away")
    except OSError as e:
        raise _output_error(e, d) from None
    return d


def temp_path_in(directory: str | os.PathLike, stem: str = "", *, root: str | os.PathLike | None = None) -> Path:
    """Create an empty temporary file ``.annotator-XXXXXXXX.tmp`` in ``directory`` and return its path.

    ``stem`` is accepted for compatibility and not used in the name (names stay short whatever the target).
    The file has mode :data:`FILE_MODE`. The caller owns the file and must remove or rename it.
    """
    ensure_real_dir(directory, root)
    for _ in range(100):
        path = Path(directory) / _random_temp_name()
        check_write(path, "create")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        except FileExistsError:
            continue
        except OSError as e:
            raise _output_error(e, path) from None
        try:
            os.fchmod(fd, FILE_MODE)  # the creation mode is masked by the umask already; be explicit
        finally:
            os.close(fd)
        return path
    raise OutputError(f"cannot create a temporary file in {directory}: 100 names taken")  # pragma: no cover


def _same_regular_file(tmp: Path, target: Path) -> bool:
    """True when ``target`` is a regular file (not a link) with exactly ``tmp``'s bytes."""
    try:
        st = os.lstat(target)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != os.path.getsize(tmp):
        return False
    try:
        return filecmp.cmp(tmp, target, shallow=False)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike, mode: Literal["w", "wb"] = "w", *, root: str | os.PathLike | None = None
) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces ``path`` unless the bytes are the same.

    Args:
        path: the target file. Its parent folders are created (real folders only below ``root``).
        mode: ``"w"`` (text, UTF-8, ``\\n`` line endings) or ``"wb"`` (bytes).
        root: the output folder (see :func:`ensure_real_dir`).

    Raises:
        OutputError: the file or its folder can not be written (one line with the path and the cause).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    if target.is_dir() and not target.is_symlink():
        raise OutputError(f"cannot write {target}: it is a folder; move it away")
    tmp = temp_path_in(target.parent, root=root)  # checks the folders (links) first, then the guard
    try:
        check_write(target, "replace")
        kwargs = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        try:
            f = open(tmp, mode, **kwargs)
        except OSError as e:
            raise _output_error(e, target) from None
        with f:
            yield f
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise _output_error(e, target) from None
        if _same_regular_file(tmp, target):
            tmp.unlink()
            return
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise _output_error(e, target) from None
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise _output_error(e, target) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, root: str | os.PathLike | None = None) -> bool:
    """Write ``data`` to ``path`` atomically; returns False (and touches nothing) when the file already holds it."""
    target = Path(path)
    try:
        st = os.lstat(target)
        if stat.S_ISREG(st.st_mode) and st.st_size == len(data) and target.read_bytes() == data:
            return False
    except OSError:
        pass
    with atomic_writer(target, "wb", root=root) as f:
        f.write(data)
    return True


def stage_bytes(path: str | os.PathLike, data: bytes, *, root: str | os.PathLike | None = None) -> Path | None:
    """First half of a batched atomic write: ``data`` in a new temp file beside ``path``, *not* synced yet.

    Returns the temp file, or None (nothing written) when ``path`` already holds ``data``. Hand the
    ``(temp, path)`` pairs of a batch to :func:`commit_staged`; on an error before that, unlink the temp files.
    """
    target = Path(path)
    try:
        st = os.lstat(target)
        if stat.S_ISREG(st.st_mode) and st.st_size == len(data) and target.read_bytes() == data:
            return None
    except OSError:
        pass
    if target.is_dir() and not target.is_symlink():
        raise OutputError(f"cannot write {target}: it is a folder; move it away")
    check_write(target, "replace")  # refused before anything is staged: never beside or over an input
    tmp = temp_path_in(target.parent, root=root)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _output_error(e, target) from None
    return tmp


def _syncfs(path: Path) -> bool:
    """``syncfs(2)`` of the file system holding ``path`` (Linux); False where it is not available."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
    except (OSError, AttributeError):
        return False
    try:
        return libc.syncfs(fd) == 0
    except AttributeError:
        return False
    finally:
        os.close(fd)


def commit_staged(staged: list[tuple[Path, Path]]) -> None:
    """Second half of a batched atomic write: make every staged temp file durable with **one** sync of their
    file system (``syncfs``; elsewhere one ``fsync`` per file), then rename each over its target and sync the
    folders holding them. A crash before the renames leaves the targets as they were (and temp files that
    :func:`is_own_temp_name` recognises); after, each target is the old file or the complete new one.

    Raises:
        OutputError: a file can not be synced or renamed (the temp files not yet renamed are removed).
    """
    if not staged:
        return
    try:
        if not _syncfs(staged[0][0].parent):
            for tmp, target in staged:
                try:
                    fd = os.open(tmp, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError as e:
                    raise _output_error(e, target) from None
        for tmp, target in staged:
            check_write(target, "replace")
            try:
                os.replace(tmp, target)
            except OSError as e:
                raise _output_error(e, target) from None
        for folder in {t.parent for _, t in staged}:
            with contextlib.suppress(OSError):
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, root: str | os.PathLike | None = None) -> bool:
    """Write ``text`` (UTF-8, ``\\n`` line endings) to ``path`` atomically; False when nothing changed."""
    return atomic_write_bytes(path, text.encode("utf-8"), root=root)


def atomic_symlink(target: str | os.PathLike, link: str | os.PathLike, *, root: str | os.PathLike | None = None) -> bool:
    """Make ``link`` a symbolic link to ``target`` (replacing what is there); False when it already is one.

    Raises:
        OutputError: ``link``'s folder can't be written, or ``link`` is a real folder.
    """
    link = Path(link)
    want = os.fspath(target)
    try:
        if os.readlink(link) == want:
            return False
    except OSError:
        pass
    ensure_real_dir(link.parent, root)
    check_write(link, "replace")
    for _ in range(100):
        tmp = link.parent / _random_temp_name()
        check_write(tmp, "create")
        try:
            os.symlink(want, tmp)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise _output_error(e, link) from None
    try:
        os.replace(tmp, link)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _output_error(e, link) from None
    return True


def remove_file(path: str | os.PathLike) -> bool:
    """Remove a file or link (never a folder); False when there was none.

    Raises:
        OutputError: it exists and can not be removed (read-only folder, permission).
        annotator.path_guard.UnsafePathError: it is an input, or outside the registered output.
    """
    if not os.path.lexists(path):
        return False
    check_write(path, "remove")
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        raise OutputError(f"cannot replace {path}: it is a folder; move it away") from None
    except OSError as e:
        if e.errno == 21:  # EISDIR on some systems
            raise OutputError(f"cannot replace {path}: it is a folder; move it away") from None
        raise OutputError(f"cannot remove {describe_os_error(e, path)}") from None
