"""Find input images under a root and decode them exactly as Ultralytics does, refusing bad files with a reason.

Finding (:func:`scan_sources`):

* ``root`` is a folder (scanned recursively), a single image file, or a ``.txt`` list of image paths (one per
  line, relative to the list's folder or absolute inside it) -- the inputs Ultralytics' predictor accepts.
* Items are sorted by ``rel_path`` (POSIX, relative to the root; for a list, to the list's folder), so two
  scans of the same tree give the same order and ``a.jpg`` and ``sub/a.jpg`` stay distinct.
* Files and folders must stay inside the root: a symlink that resolves outside it is refused with a reason,
  a folder reached twice (symlink loop, second link to the same folder) is scanned once.
* Suffixes are matched case-insensitively against :data:`IMAGE_SUFFIXES`; video files
  (:data:`annotator.video.decode.VIDEO_SUFFIXES`) go to ``ScanResult.videos`` (labelled by
  :mod:`annotator.video`); other files are ignored silently, as are our own writers' temp files
  (``.<name>.tmp``).

Reading and decoding one input live in :mod:`annotator.image_decode` (re-exported here).

Example:
    >>> import tempfile, cv2, numpy as np
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "sub").mkdir()
    >>> _ = cv2.imwrite(str(root / "b.png"), np.zeros((8, 12, 3), np.uint8))
    >>> _ = cv2.imwrite(str(root / "sub" / "a.JPG"), np.zeros((8, 12, 3), np.uint8))
    >>> _ = (root / "notes.txt").write_text("not an image: ignored")
    >>> scan = scan_sources(root)
    >>> [item.rel_path for item in scan.items], scan.refused
    (['b.png', 'sub/a.JPG'], [])
    >>> load_image(scan.items[1]).image_hw
    (8, 12)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from annotator.image_decode import (  # noqa: F401 - re-exported: the input side of the package in one place
    IMAGE_SUFFIXES,
    MAX_FILE_BYTES_PER_PIXEL,
    ImageDecodeError,
    _kind_of,
    _looked_for,
    decode_image_bytes,
    load_image,
    max_file_bytes,
    read_image_bytes,
)
from annotator.records import SourceItem
from annotator.video.decode import is_video_path


LIST_SUFFIX = ".txt"


@dataclass(frozen=True)
class ScanResult:
    """What :func:`scan_sources` found.

    Attributes:
        root: the root as given (folder, image file or ``.txt`` list), made absolute.
        items: images, sorted by ``rel_path``.
        refused: ``(rel_path, reason)`` for entries that were found but will not be read, sorted by rel_path.
        videos: video files (:data:`annotator.video.decode.VIDEO_SUFFIXES`), sorted by ``rel_path``; labelled
            frame by frame by :mod:`annotator.video` (empty for an image-only tree).
    """

    root: Path
    items: list[SourceItem] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    videos: list[SourceItem] = field(default_factory=list)




def is_image_path(path: str | Path) -> bool:
    """True when the file name has an image suffix (case-insensitive).

    Example:
        >>> is_image_path("a/B.JPG"), is_image_path("notes.txt")
        (True, False)
    """
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _is_own_temp_file(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


# ---------------------------------------------------------------------------------------------------- finding


class _Walker:
    """Recursive, deterministic, containment-checked walk that collects items and refusals."""

    def __init__(self, base: Path):
        self.base = base  # absolute, not resolved: rel_paths are relative to it
        self.base_real = base.resolve()
        self.items: dict[str, SourceItem] = {}
        self.refused: dict[str, str] = {}
        self.videos: dict[str, SourceItem] = {}
        self.seen_dirs: dict[tuple[int, int], str] = {}

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.base)).as_posix()

    def inside(self, real: Path) -> bool:
        return real == self.base_real or real.is_relative_to(self.base_real)

    def add_path(self, path: Path) -> None:
        """Add a file or folder below ``base`` (used for the root itself and for list entries)."""
        rel = self.rel(path)
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # missing, broken link or link loop
            self.refused[rel] = f"does not exist or cannot be resolved ({type(exc).__name__}): check the path"
            return
        if not self.inside(real):
            self.refused[rel] = f"resolves outside {self.base} (to {real}): copy or move it inside the root"
            return
        if real.is_dir():
            self.walk_dir(path, rel)
        elif not real.is_file():
            self.refused[rel] = _special_file_reason(real)
        elif is_image_path(path.name):
            self.items.setdefault(rel, SourceItem(path=path, rel_path=rel))
        elif is_video_path(path.name):
            self.videos.setdefault(rel, SourceItem(path=path, rel_path=rel))
        else:
            self.refused[rel] = f"not an image suffix (looked for {_looked_for()})"

    def walk_dir(self, directory: Path, rel_dir: str) -> None:
        try:
            st = directory.stat()
        except OSError as exc:
            self.refused[rel_dir] = f"cannot stat folder: {exc}"
            return
        key = (st.st_dev, st.st_ino)
        if key in self.seen_dirs:
            first = self.seen_dirs[key] or "."
            self.refused[rel_dir] = f"folder already scanned as {first!r} (symlink loop or second link): skipped"
            return
        self.seen_dirs[key] = "" if rel_dir == "." else rel_dir
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.refused[rel_dir] = f"cannot list folder ({type(exc).__name__}: {exc}): check its permissions"
            return
        for entry in entries:
            if _is_own_temp_file(entry.name):
                continue
            path = directory / entry.name
            rel = entry.name if rel_dir == "." else f"{rel_dir}/{entry.name}"
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = entry.is_file(follow_symlinks=True)
            except OSError as exc:
                self.refused[rel] = f"cannot stat ({type(exc).__name__}: {exc})"
                continue
            if not is_dir and not is_image_path(entry.name) and not is_video_path(entry.name):
                continue  # non-image, non-video files are ignored silently (links to them too)
            if is_link:
                try:
                    real = path.resolve(strict=True)
                except (OSError, RuntimeError) as exc:
                    self.refused[rel] = f"broken symlink ({type(exc).__name__}): fix or remove it"
                    continue
                if not self.inside(real):
                    self.refused[rel] = f"symlink resolves outside the root (to {real}): copy the data inside instead"
                    continue
            if is_dir:
                self.walk_dir(path, rel)
            elif is_file and is_video_path(entry.name):
                self.videos[rel] = SourceItem(path=path, rel_path=rel)
            elif is_file:
                self.items[rel] = SourceItem(path=path, rel_path=rel)
            else:
                self.refused[rel] = _special_file_reason(path)

    def result(self, root: Path) -> ScanResult:
        for found, video in ((self.items, False), (self.videos, True)):
            for rel in [r for r in found if name_problem(r, video=video)]:
                self.refused[rel] = name_problem(rel, video=video)  # type: ignore[assignment]
                del found[rel]
        items = [self.items[k] for k in sorted(self.items)]
        refused = sorted((printable_name(k), v) for k, v in self.refused.items())
        videos = [self.videos[k] for k in sorted(self.videos)]
        return ScanResult(root=root, items=items, refused=refused, videos=videos)


#: the characters ``str.splitlines`` (and so Ultralytics reading an image list) breaks a line at
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def printable_name(name: str) -> str:
    """``name`` safe to print on one line and to store as UTF-8: bytes of a non-UTF-8 file name (``os.fsdecode``
    made them lone surrogates) shown as ``\\xff``, line breaks and other control characters as ``\\n``, ``\\x01``.

    Example:
        >>> print(printable_name(os.fsdecode(b"bad\\xff.jpg")), printable_name("two\\nlines.jpg"), printable_name("ok.jpg"))
        bad\\xff.jpg two\\nlines.jpg ok.jpg
    """
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


#: the longest file name most file systems take, in bytes (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units)
NAME_MAX_BYTES = 255


def _output_names(name: str, video: bool) -> list[str]:
    """The file names the outputs derive from an input's name: its label ``<stem>.txt`` and link (an image), its
    frames folder and ``<name>.json`` tracks file (a video)."""
    if video:
        return [name, f"{name}.json"]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return [name, f"{stem}.txt"]


def name_problem(rel: str, *, video: bool = False) -> str | None:
    """Why an input's relative path can not key its outputs, or None.

    * not valid UTF-8: the ledger, the COCO JSON and every review file store names as UTF-8 text;
    * a line break (any of :data:`LINE_BREAKS`): YOLO image lists (``labelled_images.list``, Ultralytics'
      ``train: list.txt``) hold one path per line, so the image could not be listed for training;
    * an output named after it would be longer than :data:`NAME_MAX_BYTES` (a 255-byte ``x.jpeg`` is labelled:
      its ``x.txt`` is shorter; a 255-byte video is not: its tracks file adds ``.json``).

    Every other character (backslashes, quotes, ``<>&``, tabs and other control characters, any Unicode) is
    labelled as it is; review files escape what their format can not hold (:mod:`annotator.review.xml_text`).
    """
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (the outputs store names as UTF-8 text): rename it"
    if any(c in LINE_BREAKS for c in rel):
        return "file name holds a line break (YOLO image lists hold one path per line): rename it"
    for out in _output_names(rel.rsplit("/", 1)[-1], video):
        if len(out.encode("utf-8")) > NAME_MAX_BYTES:
            return (f"file name too long: its output {printable_name(out)[:40]}... would be {len(out.encode('utf-8'))} "
                    f"bytes, over the {NAME_MAX_BYTES}-byte limit of file names: rename it")  # fmt: skip
    return None


def _special_file_reason(path: Path) -> str:
    try:
        kind = _kind_of(os.stat(path).st_mode) or "not a regular file"
    except OSError as exc:
        return f"cannot stat ({type(exc).__name__}: {exc.strerror or exc})"
    return f"{kind}, not a regular file: skipped (never opened)"


def _read_list_file(list_path: Path) -> list[str]:
    raw = list_path.read_bytes()
    text = raw.decode("utf-8-sig")  # tolerate a BOM, like Ultralytics
    return [line.strip() for line in text.splitlines() if line.strip()]


def scan_sources(root: Path | str) -> ScanResult:
    """Find the input images under ``root`` (folder, single image file, or ``.txt`` list of image paths).

    Args:
        root: a folder (recursive), one image file (one item, ``rel_path`` = its name), or a ``.txt`` file
            listing images or folders one per line, relative to the list's folder (absolute paths must also be
            inside that folder, because ``rel_path`` keys the outputs).

    Returns:
        :class:`ScanResult` with items sorted by ``rel_path`` and the refused entries with one-line reasons.

    Raises:
        ValueError: ``root`` does not exist, is neither a folder, an image nor a ``.txt`` list, or holds no image.

    Example:
        >>> import tempfile
        >>> scan_sources(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: no images found under ... (looked for .avif, .bmp, ...)
    """
    root = Path(root).absolute()
    try:
        str(root).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"input {printable_name(str(root))}: its path is not valid UTF-8 (the outputs store paths as "
                         f"UTF-8 text): rename it") from None  # fmt: skip
    if not root.exists():
        raise ValueError(f"input {root} does not exist: give a folder, an image file or a .txt list of images")
    if root.is_dir():
        walker = _Walker(root)
        walker.walk_dir(root, ".")
    elif not root.is_file():
        raise ValueError(f"input {root} is {_special_file_reason(root).split(',')[0]}: give a folder, an image file or a .txt list")
    elif is_image_path(root.name):
        walker = _Walker(root.parent)
        walker.items[root.name] = SourceItem(path=root, rel_path=root.name)
    elif is_video_path(root.name):
        walker = _Walker(root.parent)
        walker.videos[root.name] = SourceItem(path=root, rel_path=root.name)
    elif root.suffix.lower() == LIST_SUFFIX:
        walker = _Walker(root.parent)
        for line in _read_list_file(root):
            entry = Path(line)
            path = entry if entry.is_absolute() else root.parent / entry
            walker.add_path(Path(os.path.normpath(path)))
    else:
        raise ValueError(
            f"input {root} is not a folder, an image ({_looked_for()}) or a .txt list of image paths"
        )
    result = walker.result(root)
    if not result.items and not result.videos:
        detail = ""
        if result.refused:
            first = "; ".join(f"{p}: {r}" for p, r in result.refused[:3])
            detail = f"; {len(result.refused)} entries refused, e.g. {first}"
        raise ValueError(f"no images found under {root} (looked for {_looked_for()}){detail}")
    return result


# ---------------------------------------------------------------------------------------------------- decoding
