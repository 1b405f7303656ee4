"""Validate a ``prompt_points`` JSON file (format: :mod:`annotator.prompt_points`) into a :class:`PointsFile`.

Example:
    >>> doc = {"names": ["cat"], "images": {"./a.jpg": [{"class": "cat", "points": [[3, 4]]}]}}
    >>> pf = parse_points(doc, "clicks.json")
    >>> list(pf.by_image), pf.by_image["a.jpg"][0].class_id
    (['a.jpg'], 0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from annotator.errors import InputFileError
from annotator.validation.files import MAX_POINTS_BYTES, cached_by_stat
from annotator.validation.json_safe import load_json_file
from annotator.validation.records import (
    MAX_PIXEL_COORD,
    PointObject,
    PointsFile,
    class_id,
    image_key,
    is_number,
    names_map,
    numbers,
)

_OBJECT_KEYS = ("class", "points", "labels", "box")
_SHAPE = '{"names": [...], "images": {"rel/path.jpg": [objects]}}'


@cached_by_stat
def load_points(path: str | Path) -> PointsFile:
    """Read (regular file, size-limited, strict JSON) and validate a points file."""
    return parse_points(load_json_file(path, max_bytes=MAX_POINTS_BYTES), path)


def parse_points(doc, path) -> PointsFile:
    """Validate a parsed points document; the first problem is an :class:`InputFileError`."""
    if not isinstance(doc, dict):
        raise InputFileError(path, "top level", f"an object {_SHAPE}", type(doc).__name__)
    unknown = sorted(set(doc) - {"names", "images"})
    if unknown:
        raise InputFileError(path, "top level", "only the keys names, images", f"key {unknown[0]!r}")
    if not isinstance(doc.get("images"), dict):
        raise InputFileError(path, "images", 'an object {"rel/path.jpg": [objects]}',
                             "nothing" if "images" not in doc else type(doc["images"]).__name__)  # fmt: skip
    names = names_map(doc["names"], path) if doc.get("names") is not None else {}
    by_name = {v: k for k, v in names.items()}
    by_image: dict[str, tuple[PointObject, ...]] = {}
    spelled: dict[str, str] = {}
    for raw, objs in doc["images"].items():
        place = f"images[{raw!r}]"
        key = image_key(raw, path, place)
        if key in spelled:
            raise InputFileError(path, place, "each image once", f"the same image as {spelled[key]!r}")
        spelled[key] = raw
        if not isinstance(objs, list):
            raise InputFileError(path, place, "a list of objects", type(objs).__name__)
        by_image[key] = tuple(_object(o, path, f"{place}[{k}]", names, by_name) for k, o in enumerate(objs))
    if not names:
        ids = {o.class_id for objs in by_image.values() for o in objs}
        if not ids:
            raise InputFileError(path, "", "names, or at least one object", "neither")
        names = {i: f"class{i}" for i in range(max(ids) + 1)}
    return PointsFile(names, by_image)


def _object(o, path, place: str, names: dict[int, str], by_name: dict[str, int]) -> PointObject:
    if not isinstance(o, dict):
        raise InputFileError(path, place, 'an object {"class": ..., "points": [[x, y], ...]}', type(o).__name__)
    unknown = sorted(set(o) - set(_OBJECT_KEYS))
    if unknown:
        raise InputFileError(path, place, "only the keys class, points, labels, box", f"key {unknown[0]!r}")
    c = o.get("class")
    if isinstance(c, str):
        if c not in by_name:
            raise InputFileError(path, f"{place}.class", f"a class id or a name in names {sorted(by_name)[:10]}", c)
        cid = by_name[c]
    else:
        cid = class_id(c, path, f"{place}.class", names)
    raw_pts = o.get("points", [])
    if not isinstance(raw_pts, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(is_number(v) for v in p) for p in raw_pts
    ):
        raise InputFileError(path, f"{place}.points", "a list of [x, y] pairs of numbers", raw_pts)
    pts = np.asarray(raw_pts, np.float64).reshape(-1, 2)
    if not np.isfinite(pts).all() or (pts < 0).any() or (pts > MAX_PIXEL_COORD).any():
        raise InputFileError(path, f"{place}.points", "finite pixel coordinates >= 0", raw_pts)
    labels = o.get("labels", [1] * len(pts))
    if not isinstance(labels, list) or len(labels) != len(pts) or any(
        isinstance(v, bool) or v not in (0, 1) for v in labels
    ):
        raise InputFileError(path, f"{place}.labels", f"one 1 (on the object) or 0 (off it) per point "
                             f"({len(pts)} points)", labels)  # fmt: skip
    box = None
    if o.get("box") is not None:
        b = numbers(o["box"], path, f"{place}.box", "[x1, y1, x2, y2] with x1 < x2 and y1 < y2", count=4)
        if not (b[0] < b[2] and b[1] < b[3]) or (b < 0).any() or (b > MAX_PIXEL_COORD).any():
            raise InputFileError(path, f"{place}.box", "[x1, y1, x2, y2] with 0 <= x1 < x2 and 0 <= y1 < y2", o["box"])
        box = tuple(float(v) for v in b)
    lab = np.asarray(labels, np.int32)
    if box is None and not (lab == 1).any():
        raise InputFileError(path, place, "at least one point with label 1 (on the object), or a box", o)
    return PointObject(cid, pts, lab, box)  # type: ignore[arg-type]
