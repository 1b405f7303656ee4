"""Inputs are sacred: one place that compares paths on what they resolve to, and refuses writes into inputs.

Two layers, both here:

* **Layout checks** (:func:`check_annotate_paths`, :func:`check_review_dest`, :func:`check_eval_paths`): every
  path a command is given or derives (data, output and its ``labels/`` / ``images/`` / ``.annotator/``,
  prompt labels and points, ground truth, export and review destinations) is compared on its *resolved* path:
  ``os.path.realpath`` (links, chains of links, ``..`` after a link) and, for what exists, the folder's
  identity ``(st_dev, st_ino)`` (bind mounts, the same folder reached by two names). An overlap the README
  forbids raises :class:`UnsafePathError` (a :class:`~annotator.errors.ConfigError`: one line, exit 2) before
  anything is written, however the paths are spelled.
* **The write layer** (:func:`protect`, :func:`check_write`): a command registers its inputs and its output
  folders at start; the lowest write functions (:mod:`annotator.io_atomic`, the ledger, the lock, stale-temp
  cleanup, video staging, the review writers) call :func:`check_write` before they create, replace, rename
  over or delete anything. While a registration is active, a write is refused (:class:`UnsafePathError`) when
  its target resolves inside an input tree or onto an input file, or lies outside every registered output
  folder (the tool deletes and replaces only what it makes: its files in its output). Without a registration
  (a library caller using :mod:`annotator.io_atomic` directly) :func:`check_write` allows everything.

The final component of a write target is not followed (atomic writers replace a link, never write through
it); every folder above it is resolved.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "images").mkdir(); (d / "out").mkdir()
    >>> (d / "link").symlink_to(d / "images")
    >>> is_within(d / "link" / "a.jpg", d / "images")
    True
    >>> with protect(inputs=[d / "images"], output=d / "out"):
    ...     check_write(d / "out" / "a.txt", "create")      # fine
    ...     try:
    ...         check_write(d / "link" / "a.jpg", "replace")  # the input, through a link
    ...     except UnsafePathError as e:
    ...         print(str(e).split(":")[0])
    refusing to replace ...
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from annotator.errors import ConfigError

__all__ = [
    "UnsafePathError",
    "absolute_path",
    "WriteOp",
    "check_annotate_paths",
    "check_eval_paths",
    "check_review_dest",
    "check_write",
    "is_within",
    "overlaps",
    "protect",
    "real_path",
    "run_input",
    "same_path",
    "write_allowed",
]

#: ``create`` a new file, ``replace`` (rename over) an existing name, ``remove`` a file or link, ``mkdir`` a
#: folder, ``remove_tree`` a folder and everything under it.
WriteOp = Literal["create", "replace", "remove", "mkdir", "remove_tree"]
_VERBS = {"create": "create", "replace": "replace", "remove": "delete", "mkdir": "create the folder",
          "remove_tree": "delete the folder"}  # fmt: skip


class UnsafePathError(ConfigError):
    """Two paths overlap where the README forbids it, or a write would touch an input (one line, exit 2)."""


# -- resolving and comparing ------------------------------------------------------------------------------------
def real_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute, every link and ``..`` resolved (missing tail kept as given).

    Example:
        >>> real_path("/tmp/../tmp/x") == Path(os.path.realpath("/tmp")) / "x"
        True
    """
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` absolute, ``~`` expanded, ``.`` and ``//`` collapsed; a path with ``..`` is resolved as the OS
    reads it (``link/..`` is the link target's parent, not the link's folder), other links are kept as given.

    Example:
        >>> absolute_path("/tmp/./a//b")
        PosixPath('/tmp/a/b')
    """
    p = os.path.expanduser(os.fspath(path))
    if ".." in Path(p).parts:
        return real_path(p)
    return Path(os.path.normpath(os.path.abspath(p)))


def _identity(path: str | os.PathLike, *, follow: bool = True) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of what ``path`` is, or None when it does not exist / can not be stat'ed."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _chain_ids(real: Path) -> set[tuple[int, int]]:
    """Identities of ``real`` (a resolved path) and of every existing folder above it, up to ``/``."""
    ids = set()
    for p in (real, *real.parents):
        i = _identity(p)
        if i is not None:
            ids.add(i)
    return ids


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` is ``root`` or lies under it, however either is spelled.

    Compared on resolved paths, then on identity: ``root`` (when it exists) is the same folder as ``path`` or
    one of the folders above ``path`` (bind mounts, one folder under two names).
    """
    p, r = real_path(path), real_path(root)
    if p == r or r in p.parents:
        return True
    rid = _identity(r)
    return rid is not None and rid in _chain_ids(p)


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file or folder (resolved, or the same ``(st_dev, st_ino)``)."""
    ra, rb = real_path(a), real_path(b)
    if ra == rb:
        return True
    ia = _identity(ra)
    return ia is not None and ia == _identity(rb)


def overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when one of ``a`` / ``b`` lies within the other (or both are the same)."""
    return is_within(a, b) or is_within(b, a)


def _refuse(msg: str) -> UnsafePathError:
    return UnsafePathError(msg.replace("\n", " "))


# -- layout checks (before anything is written) -----------------------------------------------------------------
def check_annotate_paths(cfg) -> None:
    """Refuse the overlaps of an ``annotate`` run (``cfg``: an :class:`annotator.config.AnnotateConfig`).

    * the output folder is ``data`` or lies inside it (``data`` a folder);
    * the input lies in (or is) the output's ``labels/``, ``images/`` (links) or ``.annotator/``;
    * the prompt labels or points are, contain or lie inside the output labels, image links or state, or are
      one of the files the run writes (``data.yaml``, the COCO JSON, ``scores.csv``, ...).

    Raises:
        UnsafePathError: one line naming both paths.
    """
    from annotator.ledger import LEDGER_DIRNAME

    data, out = Path(cfg.data), Path(cfg.output_dir)
    data_dir = data if data.is_dir() else data.parent
    if real_path(out) == Path(real_path(out).anchor):
        raise _refuse(f"output_dir must not be a file-system root ({out}{_resolved(out)})")
    if data.is_dir() and is_within(out, data_dir):
        raise _refuse(
            f"output_dir {out} is inside the input folder {data_dir}{_resolved(out)}: choose a folder outside it"
        )
    state = out / LEDGER_DIRNAME
    subs = [state] if cfg.is_sibling_layout else [cfg.labels_dir, cfg.image_links_dir, state]
    for sub in subs:
        if is_within(data, sub):
            raise _refuse(
                f"the input {data}{_resolved(data)} lies in {sub}{_resolved(sub)}, where this run writes the dataset's "
                f"{sub.name}/: choose another output_dir (the default for a folder named 'images' is the "
                f"sibling 'labels' folder)"
            )
    written_files = [out / n for n in ("data.yaml", "run_report.json", "scores.csv", "labelled_images.list",
                                         "eval.json", cfg.coco_filename)]  # fmt: skip
    for name, given in (("prompt_labels", cfg.prompt_labels), ("prompt_points", cfg.prompt_points)):
        if given is None:
            continue
        given = Path(given)
        places = [cfg.labels_dir] if cfg.writes_yolo else []
        places += [state] if cfg.is_sibling_layout else [cfg.image_links_dir, state]
        for place in places:
            if overlaps(given, place):
                raise _refuse(
                    f"output labels {place} would overwrite the {name.replace('_', ' ')} {given}{_resolved(given)}: "
                    f"choose another output_dir (the default for data 'X/images' is 'X/labels-segment')"
                )
        for f in written_files:
            if same_path(given, f):
                what = name.replace("_", " ")
                raise _refuse(f"the run writes {f}, which is the {what} {given}: choose another output_dir")


def run_input(run) -> Path:
    """What a finished run read (``run``: a :class:`annotator.finished.FinishedRun`): its ``data`` folder, or
    its one image / ``.txt`` list (not that file's folder, which may hold the output)."""
    data = Path(str((getattr(run, "settings", None) or {}).get("data") or run.data_root))  # duck-typed runs too
    return data if data.exists() else Path(run.data_root)


def check_review_dest(run, dest: str | os.PathLike) -> None:
    """Refuse an ``export`` / ``review`` destination that overlaps the run's input (:func:`run_input`), or lies
    in the output's ``labels/``, ``images/`` or ``.annotator/`` (``run``: a :class:`annotator.finished.FinishedRun`)."""
    from annotator.ledger import LEDGER_DIRNAME

    dest, data = Path(dest), run_input(run)
    if overlaps(dest, data):
        raise _refuse(
            f"the destination {dest}{_resolved(dest)} overlaps the run's input {data}: "
            f"choose a folder outside it (the default is OUTPUT_DIR/review/...)"
        )
    out = Path(run.output_dir)
    sibling = bool(getattr(run, "sibling_layout", False))
    places = [out / LEDGER_DIRNAME] + ([] if sibling else [out / "labels", out / "images"])
    for place in places:
        if is_within(dest, place):
            raise _refuse(f"the destination {dest}{_resolved(dest)} lies in {place}, which the annotate run owns: "
                          f"choose another folder (the default is OUTPUT_DIR/review/...)")  # fmt: skip


def check_eval_paths(run, gt: str | os.PathLike, writes: str | os.PathLike) -> None:
    """Refuse ground truth that ``eval`` would overwrite (``writes``: ``OUTPUT_DIR/eval.json``) or that lies in
    the run's ``.annotator/`` state."""
    from annotator.ledger import LEDGER_DIRNAME

    gt, out = Path(gt), Path(run.output_dir)
    if same_path(gt, writes) or overlaps(gt, out / LEDGER_DIRNAME):
        raise _refuse(f"the ground truth {gt}{_resolved(gt)} is where eval writes ({writes}) or the "
                      f"run's state: copy it elsewhere first")  # fmt: skip


def _resolved(p: Path) -> str:
    """`` (resolves to R)`` when ``p`` resolves elsewhere, else ``""``."""
    r = real_path(p)
    return "" if r == Path(os.path.abspath(os.path.expanduser(os.fspath(p)))) else f" (resolves to {r})"


# -- the write layer --------------------------------------------------------------------------------------------
@dataclass
class Protection:
    """One registration: input trees and files that no write may touch, and the output folders writes go to."""

    input_dirs: list[tuple[Path, Path, tuple[int, int] | None]] = field(default_factory=list)  # given, real, id
    input_files: list[tuple[Path, Path, tuple[int, int] | None]] = field(default_factory=list)
    outputs: list[tuple[Path, Path]] = field(default_factory=list)  # given, real (resolved at registration)

    def add_inputs(self, paths: Iterable[str | os.PathLike | None]) -> None:
        """Protect more inputs (folders: their whole tree; files: the file). Missing paths are skipped."""
        for p in paths:
            if p is None:
                continue
            p = Path(os.path.expanduser(os.fspath(p))).absolute()
            r = real_path(p)
            try:
                st = os.stat(r)
            except (OSError, ValueError):
                continue
            entry = (p, r, (st.st_dev, st.st_ino))
            (self.input_dirs if stat.S_ISDIR(st.st_mode) else self.input_files).append(entry)
        with _LOCK:
            _CACHE.clear()

    def add_outputs(self, paths: Iterable[str | os.PathLike]) -> None:
        """Allow writes under more folders (created later if missing)."""
        for p in paths:
            p = Path(os.path.expanduser(os.fspath(p))).absolute()
            self.outputs.append((p, real_path(p)))


_SCOPES: list[Protection] = []
_LOCK = threading.Lock()
#: resolved parent folder -> identities of it and every folder above (a write's cost stays a few syscalls)
_CACHE: dict[str, frozenset] = {}


@contextlib.contextmanager
def protect(
    inputs: Iterable[str | os.PathLike | None] = (),
    output: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
) -> Iterator[Protection]:
    """Register ``inputs`` (folders and files) and ``output`` (one folder or several) for the block's duration.

    Registrations nest and are process-wide (the writer threads a command starts see them): a write must lie in
    an output of some active registration and outside the inputs of all of them.
    """
    prot = Protection()
    prot.add_inputs(inputs)
    if output is not None:
        outs = [output] if isinstance(output, (str, os.PathLike)) else list(output)
        prot.add_outputs(outs)
    with _LOCK:
        _SCOPES.append(prot)
        _CACHE.clear()
    try:
        yield prot
    finally:
        with _LOCK:
            with contextlib.suppress(ValueError):
                _SCOPES.remove(prot)
            _CACHE.clear()


def _dir_ids(real_dir: Path) -> frozenset:
    key = os.fspath(real_dir)
    ids = _CACHE.get(key)
    if ids is None:
        ids = frozenset(_chain_ids(real_dir))
        with _LOCK:
            if len(_CACHE) > 4096:
                _CACHE.clear()
            _CACHE[key] = ids
    return ids


def check_write(path: str | os.PathLike, op: WriteOp) -> None:
    """Refuse ``op`` on ``path`` when it would touch an input or lies outside every registered output.

    Call it right before the file-system call that creates, replaces (renames over), or deletes ``path``.
    Nothing is checked when no :func:`protect` registration is active.

    Raises:
        UnsafePathError: one line: what, the path, what it resolves to and which input or output it breaks.
    """
    if not _SCOPES:
        return
    why = _refusal(path, op)
    if why:
        raise _refuse(why)


def write_allowed(path: str | os.PathLike, op: WriteOp) -> bool:
    """:func:`check_write` as a predicate (for clean-ups that skip what they may not touch)."""
    return not _SCOPES or not _refusal(path, op)


def _refusal(path: str | os.PathLike, op: WriteOp) -> str:
    scopes = list(_SCOPES)
    p = Path(os.path.expanduser(os.fspath(path))).absolute()  # no lexical '..' folding: 'link/..' is not '.'
    if p.name in ("", ".", ".."):
        parent = target = real_path(p)
    else:  # the last component is never followed: a link there is replaced, not written through
        parent = real_path(p.parent)
        target = parent / p.name
    ids = set(_dir_ids(parent))
    own = _identity(target, follow=False)
    is_dir = os.path.isdir(target) and not os.path.islink(target)
    if own is not None and is_dir:
        ids.add(own)
    verb = _VERBS.get(op, op)
    shown = f"{p}" + (f" (it resolves to {target})" if target != p else "")
    for prot in scopes:
        for given, real, ident in prot.input_dirs:
            if target == real or real in target.parents or (ident is not None and ident in ids):
                return f"refusing to {verb} {shown}: it is inside the input {given}; inputs are never modified"
            if op == "remove_tree" and is_dir and is_within(real, target):
                return f"refusing to {verb} {shown}: it holds the input {given}; inputs are never modified"
        for given, real, ident in prot.input_files:
            if target == real or (own is not None and own == ident and op != "mkdir"):
                return f"refusing to {verb} {shown}: it is the input file {given}; inputs are never modified"
            if op == "remove_tree" and is_dir and real_path(real).is_relative_to(target):
                return f"refusing to {verb} {shown}: it holds the input file {given}; inputs are never modified"
    for prot in scopes:
        for _given, real in prot.outputs:
            if target == real or real in target.parents:
                return ""
            rid = _identity(real)
            if rid is not None and rid in ids:
                return ""
            if op == "mkdir" and target in real.parents:  # the output folder's own missing parents
                return ""
        for given, _real in prot.outputs:  # the output folder itself, when it is a link the user chose
            if op == "mkdir" and given.name not in ("", ".", "..") and target == real_path(given.parent) / given.name:
                return ""
    outs = ", ".join(str(g) for prot in scopes for g, _ in prot.outputs) or "none"
    return f"refusing to {verb} {shown}: it is outside the output folder ({outs}); the tool writes only there"
