"""Validate YOLO label text (prompt labels, ground truth) into :class:`YoloRow` records.

A row is ``class cx cy w h`` (a box) or ``class x1 y1 x2 y2 x3 y3 ...`` (a polygon of >= 3 points), values
normalised to ``[0, 1]`` (up to :data:`~annotator.validation.records.EDGE_TOLERANCE` outside, then clipped),
boxes of positive size, class an integer ``>= 0`` (below ``n_classes`` when the names are known).

Example:
    >>> rows = parse_yolo_text("0 0.5 0.5 0.2 0.4\\n1 0.1 0.1 0.9 0.1 0.5 0.8\\n", "a.txt")
    >>> [(r.class_id, r.box_cxcywh_norm is not None) for r in rows]
    [(0, True), (1, False)]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Collection, Iterator

import numpy as np

from annotator.errors import InputFileError
from annotator.validation.files import MAX_LABEL_TXT_BYTES, read_user_text, user_files
from annotator.validation.records import EDGE_TOLERANCE, MAX_CLASS_ID, YoloRow

_LO, _HI = -EDGE_TOLERANCE, 1.0 + EDGE_TOLERANCE

#: files in a labels tree that are not label files (labelImg and others write the class names there)
NOT_LABEL_FILES = frozenset({"classes.txt"})


def label_files(folder: Path) -> Iterator[Path]:
    """The label files of a YOLO tree: every ``*.txt`` under ``folder`` but :data:`NOT_LABEL_FILES` at its top,
    special files refused unopened (:func:`~annotator.validation.files.user_files`)."""
    for p in user_files(folder, ".txt"):
        if not (p.parent == Path(folder) and p.name in NOT_LABEL_FILES):
            yield p


def load_yolo_file(path: str | Path, n_classes: int | Collection[int] | None = None, *,
                   skip_unknown: bool = False) -> list[YoloRow]:
    """Read (regular file, size-limited) and validate one label file."""
    return parse_yolo_text(read_user_text(path, max_bytes=MAX_LABEL_TXT_BYTES), path, n_classes,
                           skip_unknown=skip_unknown)  # fmt: skip


def parse_yolo_text(text: str, path, n_classes: int | Collection[int] | None = None, *,
                    skip_unknown: bool = False) -> list[YoloRow]:
    """The rows of a label file's text; ``n_classes``: class ids must be below it, or in it when it is the
    collection of the known ids (``skip_unknown``: rows of another class are left out instead, as the
    evaluator does for classes the run does not know)."""
    known = None if n_classes is None or isinstance(n_classes, int) else frozenset(n_classes)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        vals = line.split()
        if not vals:
            continue
        place = f"line {n}"
        try:
            c = int(vals[0])
        except ValueError:
            raise InputFileError(path, place, "a class id (an integer) first", vals[0][:40]) from None
        if c < 0 or c > MAX_CLASS_ID:
            raise InputFileError(path, place, f"a class id in 0..{MAX_CLASS_ID}", c)
        if (c not in known) if known is not None else (n_classes is not None and c >= n_classes):
            if skip_unknown:
                continue
            allowed = f"below {n_classes} (the number of class names)" if known is None else f"in {sorted(known)[:10]}"
            raise InputFileError(path, place, f"a class id {allowed}", c)
        try:
            v = [float(x) for x in vals[1:]]
        except ValueError:
            raise InputFileError(path, place, "numbers after the class id", line.strip()[:60]) from None
        if not all(math.isfinite(x) for x in v):
            raise InputFileError(path, place, "finite numbers", line.strip()[:60])
        if len(v) == 4:
            rows.append(_box(c, n, v, path, place))
        elif len(v) >= 6 and len(v) % 2 == 0:
            xy = np.asarray(v, np.float64).reshape(-1, 2)
            if (xy < _LO).any() or (xy > _HI).any():
                raise InputFileError(path, place, "polygon coordinates normalised to [0, 1]", line.strip()[:60])
            rows.append(YoloRow(c, n, polygon_xy_norm=np.clip(xy, 0.0, 1.0)))
        else:
            raise InputFileError(path, place, "4 box values or >= 3 x,y points after the class id",
                                 f"{len(v)} values")  # fmt: skip
    return rows


def _box(c: int, n: int, v: list[float], path, place: str) -> YoloRow:
    cx, cy, w, h = v
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if w <= 0 or h <= 0:
        raise InputFileError(path, place, "a box of positive width and height", f"w {w:g}, h {h:g}")
    if min(x1, y1) < _LO or max(x2, y2) > _HI:
        raise InputFileError(path, place, "a box inside the image (normalised to [0, 1])", f"{cx:g} {cy:g} {w:g} {h:g}")
    if min(x1, y1) >= 0.0 and max(x2, y2) <= 1.0:
        return YoloRow(c, n, box_cxcywh_norm=(cx, cy, w, h))  # inside: the row's own numbers
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
    if not (x2 > x1 and y2 > y1):
        raise InputFileError(path, place, "a box of positive width and height", f"{cx:g} {cy:g} {w:g} {h:g}")
    return YoloRow(c, n, box_cxcywh_norm=((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
