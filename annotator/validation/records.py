"""Typed records a validated user file becomes, and the bound checks they are built with.

Every record holds finite numbers only, boxes of positive size, class ids ``>= 0`` (and within the names
when the file has names), image keys normalised (``./a.jpg`` is ``a.jpg``). Coordinates: ``*_px`` in pixels
of the upright image (``x`` right, ``y`` down), ``*_norm`` normalised to ``[0, 1]`` as YOLO writes them.

A coordinate may lie outside the image by at most :data:`EDGE_TOLERANCE` of the image's side (a rounding of
the labelling tool); it is clipped onto the image. Farther out is an error.

Example:
    >>> clip_box_px((-0.4, 2.0, 50.0, 40.0), (40, 50), "f.json", "annotations[0].bbox")
    (0.0, 2.0, 50.0, 40.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from annotator.errors import InputFileError

#: how far (fraction of the image side) a coordinate may lie outside the image before it is an error
EDGE_TOLERANCE = 0.01
#: the largest class id accepted from a file without names (class names ``class0..`` are made up to it)
MAX_CLASS_ID = 99_999
#: the largest pixel coordinate accepted before the image size is known
MAX_PIXEL_COORD = 1_000_000.0


@dataclass(frozen=True)
class PointObject:
    """One object of a points file: ``points_xy_px`` (K, 2), ``labels`` (K,) of 1 (on) / 0 (off), an optional
    ``box_xyxy_px``; at least one label-1 point or a box."""

    class_id: int
    points_xy_px: np.ndarray
    labels: np.ndarray
    box_xyxy_px: tuple[float, float, float, float] | None


@dataclass(frozen=True)
class PointsFile:
    """A validated ``prompt_points`` file: class ``names`` and the objects per normalised image path."""

    names: dict[int, str]
    by_image: dict[str, tuple[PointObject, ...]]


@dataclass(frozen=True)
class LabelObject:
    """One labelled object of a prompt or ground-truth file, in pixels: a box (``box_xyxy_px``, a SAM prompt)
    or a polygon in one or more parts (``parts_xy_px``: (K, 2) arrays, K >= 3), with the source's other fields
    (``attributes``, COCO only)."""

    class_id: int
    box_xyxy_px: tuple[float, float, float, float] | None = None
    parts_xy_px: tuple[np.ndarray, ...] = ()
    attributes: dict | None = None

    @property
    def kind(self) -> str:
        return "box" if self.box_xyxy_px is not None else "polygon"


@dataclass(frozen=True)
class YoloRow:
    """One YOLO label row: ``box_cxcywh_norm`` (a box row) or ``polygon_xy_norm`` (K, 2), K >= 3; clipped to
    ``[0, 1]``."""

    class_id: int
    line: int
    box_cxcywh_norm: tuple[float, float, float, float] | None = None
    polygon_xy_norm: np.ndarray | None = None

    def to_pixels(self, image_hw: tuple[int, int]) -> LabelObject:
        h, w = image_hw
        if self.box_cxcywh_norm is not None:
            cx, cy, bw, bh = self.box_cxcywh_norm
            box = (w * (cx - bw / 2), h * (cy - bh / 2), w * (cx + bw / 2), h * (cy + bh / 2))
            return LabelObject(self.class_id, box_xyxy_px=box)
        return LabelObject(self.class_id, parts_xy_px=(self.polygon_xy_norm * (w, h),))


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    hw: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------- checks


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def finite(v, path, place: str, expected: str = "a finite number") -> float:
    """``v`` as a float when it is a finite int/float (not a bool), else an InputFileError."""
    if not is_number(v) or not math.isfinite(v):
        raise InputFileError(path, place, expected, v)
    return float(v)


def numbers(v, path, place: str, expected: str, *, count: int | None = None, min_count: int = 0) -> np.ndarray:
    """A flat list of finite numbers as a float64 array (``count`` exactly, or at least ``min_count``)."""
    if not isinstance(v, list) or (count is not None and len(v) != count) or len(v) < min_count:
        raise InputFileError(path, place, expected, v)
    if not all(is_number(x) and math.isfinite(x) for x in v):
        raise InputFileError(path, place, expected, v)
    return np.asarray(v, np.float64)


def class_id(v, path, place: str, names: dict[int, str] | None) -> int:
    """A class id: an int ``>= 0``, within ``names`` when given, else at most :data:`MAX_CLASS_ID`."""
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_CLASS_ID and (not names or v in names):
        return v
    allowed = f"a class id in {_ids(names)}" if names else f"a class id in 0..{MAX_CLASS_ID}"
    raise InputFileError(path, place, allowed, v)


def _ids(names: dict[int, str]) -> str:
    ks = sorted(names)
    return f"0..{ks[-1]}" if ks == list(range(len(ks))) else str(ks[:10])


def clip_box_px(box, image_hw: tuple[int, int], path, place: str) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` clipped onto the ``(h, w)`` image; more than :data:`EDGE_TOLERANCE` outside, or of
    no size after clipping, is an InputFileError."""
    h, w = image_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    tx, ty = EDGE_TOLERANCE * w, EDGE_TOLERANCE * h
    if x1 < -tx or y1 < -ty or x2 > w + tx or y2 > h + ty:
        raise InputFileError(path, place, f"a box inside the {w}x{h} image (pixels of the upright image)",
                             [round(v, 2) for v in (x1, y1, x2, y2)])  # fmt: skip
    out = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
    if not (out[2] > out[0] and out[3] > out[1]):
        raise InputFileError(path, place, "a box of positive width and height", [round(v, 2) for v in box])
    return out


def clip_points_px(xy: np.ndarray, image_hw: tuple[int, int], path, place: str) -> np.ndarray:
    """``(K, 2)`` pixel points clipped onto the image; more than :data:`EDGE_TOLERANCE` outside is an error."""
    h, w = image_hw
    if len(xy) and ((xy[:, 0] < -EDGE_TOLERANCE * w).any() or (xy[:, 1] < -EDGE_TOLERANCE * h).any()
                    or (xy[:, 0] > w * (1 + EDGE_TOLERANCE)).any() or (xy[:, 1] > h * (1 + EDGE_TOLERANCE)).any()):  # fmt: skip
        bad = xy[((xy < 0) | (xy > (w, h))).any(axis=1)][0].tolist()
        raise InputFileError(path, place, f"points inside the {w}x{h} image (pixels of the upright image, not "
                             f"normalised)", bad)  # fmt: skip
    return np.clip(xy, 0, (w, h))


def image_key(raw, path, place: str) -> str:
    """A relative image path with ``/`` separators, ``.`` and ``..`` resolved; absolute or escaping is an error.

    Example:
        >>> image_key("./sub/../a.jpg", "p.json", "images")
        'a.jpg'
    """
    import posixpath

    if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
        raise InputFileError(path, place, "an image path relative to data", raw)
    key = posixpath.normpath(raw)  # a backslash is a character of a POSIX name, not a separator
    if key.startswith("/") or key == "." or key == ".." or key.startswith("../"):
        raise InputFileError(path, place, "an image path relative to data (no leading '/' or '..')", raw)
    return key


def names_map(raw, path, place: str = "names") -> dict[int, str]:
    """Class names from a list (``["cat", "dog"]``) or a mapping (``{"0": "cat"}`` / ``{0: "cat"}``); ids
    ``0..MAX_CLASS_ID``, names unique non-empty strings."""
    if isinstance(raw, list):
        items = list(enumerate(raw))
    elif isinstance(raw, dict):
        items = []
        for k, v in raw.items():
            try:
                i = int(k) if not isinstance(k, bool) and not isinstance(k, float) else None
            except (TypeError, ValueError):
                i = None
            if i is None or not 0 <= i <= MAX_CLASS_ID:
                raise InputFileError(path, f"{place}[{k!r}]", f"a class id in 0..{MAX_CLASS_ID} as key", k)
            items.append((i, v))
    else:
        raise InputFileError(path, place, 'a list of names or a mapping {"0": "name", ...}', type(raw).__name__)
    if len(items) > MAX_CLASS_ID + 1:
        raise InputFileError(path, place, f"at most {MAX_CLASS_ID + 1} names", len(items))
    out: dict[int, str] = {}
    for i, v in items:
        if isinstance(v, bool) or not isinstance(v, (str, int)) or not str(v).strip():
            raise InputFileError(path, f"{place}[{i}]", "a non-empty class name", v)
        if i in out:
            raise InputFileError(path, f"{place}[{i}]", "one name per class id", f"id {i} twice")
        out[i] = str(v)
    seen: dict[str, int] = {}
    for i, v in out.items():
        if v in seen:
            raise InputFileError(path, f"{place}[{i}]", "unique class names", f"{v!r} also for class {seen[v]}")
        seen[v] = i
    return out
