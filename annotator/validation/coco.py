"""Validate COCO files: box/polygon prompts (``prompts: boxes``) and ground truth (``annotator eval``).

Shared contract: the top level is an object with ``images`` (list: unique integer ``id``, ``file_name`` unique
after normalisation, optional positive ``width``/``height``), ``categories`` (list: unique integer ``id``,
non-empty unique ``name``) and ``annotations`` (list, may be absent; never ``null``) whose ``image_id`` and
``category_id`` exist and whose optional ``id`` is unique. Numbers finite; polygons of >= 3 points.

* prompts: an annotation has a polygon ``segmentation`` (kept as it is) or a ``bbox`` ``[x, y, w, h]`` of
  positive size (a SAM box prompt); both inside the image (declared size) within the edge tolerance.
* ground truth: an annotation has a ``segmentation``: polygons, or RLE ``{"size": [h, w], "counts": ...}``
  whose counts add up to ``h * w`` (pycocotools would read past its buffer otherwise).

Example:
    >>> doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
    ...        "categories": [{"id": 3, "name": "cat"}],
    ...        "annotations": [{"image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20]}]}
    >>> p = parse_coco_prompts(doc, "boxes.json")
    >>> p.names, p.by_file["a.jpg"][0].box_xyxy_px
    ({0: 'cat'}, (1.0, 2.0, 11.0, 22.0))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotator.errors import InputFileError
from annotator.validation.files import MAX_JSON_BYTES, cached_by_stat
from annotator.validation.json_safe import load_json_file
from annotator.validation.records import (
    MAX_PIXEL_COORD,
    CocoImage,
    LabelObject,
    clip_box_px,
    clip_points_px,
    image_key,
    numbers,
)

#: the fields of a COCO annotation the tool writes itself; any other (``attributes``, ``occluded``, a source
#: id...) is carried to the output annotation of the same object
COCO_ANNOTATION_KEYS = frozenset({"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"})


@dataclass(frozen=True)
class CocoPrompts:
    """Class ``names`` (``0..n-1`` in category id order) and the objects per normalised ``file_name``."""

    names: dict[int, str]
    by_file: dict[str, tuple[LabelObject, ...]]


@dataclass(frozen=True)
class GtAnnotation:
    index: int  # position in the file's annotations (for error messages)
    image_id: int
    category_id: int
    segmentation: object  # validated polygons (list of lists) or RLE dict
    iscrowd: bool


@dataclass(frozen=True)
class GroundTruth:
    images: tuple[CocoImage, ...]
    categories: dict[int, str]  # category id -> name
    annotations: tuple[GtAnnotation, ...]


@cached_by_stat
def load_coco_prompts(path: str | Path) -> CocoPrompts:
    return parse_coco_prompts(load_json_file(path, max_bytes=MAX_JSON_BYTES), path)


def load_ground_truth(path: str | Path) -> GroundTruth:
    return parse_ground_truth(load_json_file(path, max_bytes=MAX_JSON_BYTES), path)


def _int(v, path, place: str, expected: str = "an integer id") -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise InputFileError(path, place, expected, "nothing" if v is None else v)


def _list(doc: dict, key: str, path, *, required: bool) -> list:
    if key not in doc and not required:
        return []
    v = doc.get(key)
    if not isinstance(v, list):
        raise InputFileError(path, key, "a list", "nothing" if key not in doc else ("null" if v is None else type(v).__name__))
    return v


def _dicts(items: list, key: str, path) -> None:
    for i, x in enumerate(items):
        if not isinstance(x, dict):
            raise InputFileError(path, f"{key}[{i}]", "an object", type(x).__name__)


def _frame(doc, path) -> tuple[tuple[CocoImage, ...], dict[int, str], list]:
    """images, categories (id -> name, in id order), annotations (raw dicts, checked to be objects)."""
    if not isinstance(doc, dict):
        raise InputFileError(path, "top level", 'an object {"images": [...], "categories": [...], "annotations": [...]}',
                             type(doc).__name__)  # fmt: skip
    images_raw = _list(doc, "images", path, required=True)
    cats_raw = _list(doc, "categories", path, required=True)
    anns = _list(doc, "annotations", path, required=False)
    for key, items in (("images", images_raw), ("categories", cats_raw), ("annotations", anns)):
        _dicts(items, key, path)
    images, ids, names = [], set(), {}
    for i, im in enumerate(images_raw):
        iid = _int(im.get("id"), path, f"images[{i}].id")
        if iid in ids:
            raise InputFileError(path, f"images[{i}].id", "unique image ids", f"{iid} twice")
        ids.add(iid)
        key = image_key(im.get("file_name"), path, f"images[{i}].file_name")
        if key in names:
            raise InputFileError(path, f"images[{i}].file_name", "each image once", f"{key!r} twice")
        names[key] = iid
        hw = None
        if im.get("width") is not None or im.get("height") is not None:
            w, h = im.get("width"), im.get("height")
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_PIXEL_COORD for v in (w, h)):
                raise InputFileError(path, f"images[{i}]", "positive integer width and height", f"{w} x {h}")
            hw = (h, w)
        images.append(CocoImage(iid, key, hw))
    cats: dict[int, str] = {}
    for i, c in enumerate(cats_raw):
        cid = _int(c.get("id"), path, f"categories[{i}].id")
        if cid in cats:
            raise InputFileError(path, f"categories[{i}].id", "unique category ids", f"{cid} twice")
        name = c.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InputFileError(path, f"categories[{i}].name", "a non-empty name", "nothing" if name is None else name)
        if name in cats.values():
            raise InputFileError(path, f"categories[{i}].name", "unique category names", f"{name!r} twice")
        cats[cid] = name
    ann_ids: set[int] = set()
    known_images = {im.id for im in images}
    for i, a in enumerate(anns):
        if a.get("id") is not None:
            aid = _int(a["id"], path, f"annotations[{i}].id")
            if aid in ann_ids:
                raise InputFileError(path, f"annotations[{i}].id", "unique annotation ids", f"{aid} twice")
            ann_ids.add(aid)
        if _int(a.get("image_id"), path, f"annotations[{i}].image_id") not in known_images:
            raise InputFileError(path, f"annotations[{i}].image_id", "the id of an image in images", a["image_id"])
        if _int(a.get("category_id"), path, f"annotations[{i}].category_id") not in cats:
            raise InputFileError(path, f"annotations[{i}].category_id", "the id of a category in categories",
                                 a["category_id"])  # fmt: skip
    return tuple(images), dict(sorted(cats.items())), anns


def _polygons(seg, path, place: str) -> list[np.ndarray]:
    """A COCO polygon segmentation: a list of parts, each a flat list of >= 6 (an even count) finite numbers."""
    if not seg or not isinstance(seg, list):
        raise InputFileError(path, place, "a list of polygons [[x1, y1, x2, y2, x3, y3, ...], ...]", seg)
    parts = []
    for k, p in enumerate(seg):
        xy = numbers(p, path, f"{place}[{k}]", "a polygon of >= 3 points [x1, y1, x2, y2, x3, y3, ...]", min_count=6)
        if len(xy) % 2 or np.abs(xy).max() > MAX_PIXEL_COORD:
            raise InputFileError(path, f"{place}[{k}]", "a polygon of >= 3 x,y points in pixels", p)
        parts.append(xy.reshape(-1, 2))
    return parts


def parse_coco_prompts(doc, path) -> CocoPrompts:
    """Validate a parsed COCO prompt document (see the module docstring)."""
    images, cats, anns = _frame(doc, path)
    by_id = {im.id: im for im in images}
    class_of = {cid: k for k, cid in enumerate(cats)}
    by_file: dict[str, list[LabelObject]] = {}
    for i, a in enumerate(anns):
        im = by_id[a["image_id"]]
        c = class_of[a["category_id"]]
        extra = {k: v for k, v in a.items() if k not in COCO_ANNOTATION_KEYS} or None
        seg = a.get("segmentation")
        if isinstance(seg, list) and seg:
            parts = _polygons(seg, path, f"annotations[{i}].segmentation")
            if im.hw is not None:
                parts = [_clip_xy(p, im.hw, path, f"annotations[{i}].segmentation[{k}]") for k, p in enumerate(parts)]
            obj = LabelObject(c, parts_xy_px=tuple(parts), attributes=extra)
        elif a.get("bbox") is not None:
            x, y, w, h = numbers(a["bbox"], path, f"annotations[{i}].bbox", "[x, y, w, h]: 4 finite numbers", count=4)
            if w <= 0 or h <= 0 or min(x, y) < -MAX_PIXEL_COORD or max(x + w, y + h) > MAX_PIXEL_COORD:
                raise InputFileError(path, f"annotations[{i}].bbox", "[x, y, w, h] with w > 0 and h > 0", a["bbox"])
            box = (float(x), float(y), float(x + w), float(y + h))
            if im.hw is not None:
                box = clip_box_px(box, im.hw, path, f"annotations[{i}].bbox")
            obj = LabelObject(c, box_xyxy_px=box, attributes=extra)
        else:
            raise InputFileError(path, f"annotations[{i}]", "a polygon segmentation or a bbox",
                                 "an RLE segmentation" if isinstance(seg, dict) else "neither")  # fmt: skip
        by_file.setdefault(im.file_name, []).append(obj)
    names = {k: cats[cid] for cid, k in class_of.items()}
    return CocoPrompts(names, {k: tuple(v) for k, v in by_file.items()})


def _clip_xy(xy: np.ndarray, hw: tuple[int, int], path, place: str) -> np.ndarray:
    return clip_points_px(xy, hw, path, place)


def parse_ground_truth(doc, path) -> GroundTruth:
    """Validate a parsed COCO ground-truth document (see the module docstring)."""
    images, cats, anns = _frame(doc, path)
    out = []
    for i, a in enumerate(anns):
        place = f"annotations[{i}].segmentation"
        seg = a.get("segmentation")
        if isinstance(seg, dict):
            seg = _rle(seg, path, place)
        else:
            seg = [p.ravel().tolist() for p in _polygons(seg, path, place)]
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1) or (not isinstance(crowd, (int, bool))):
            raise InputFileError(path, f"annotations[{i}].iscrowd", "0 or 1", crowd)
        out.append(GtAnnotation(i, a["image_id"], a["category_id"], seg, bool(crowd)))
    return GroundTruth(images, cats, tuple(out))


def _rle(seg: dict, path, place: str) -> dict:
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                             and 0 < v <= MAX_PIXEL_COORD for v in size)):  # fmt: skip
        raise InputFileError(path, f"{place}.size", "[height, width]: two positive integers", size)
    counts = seg.get("counts")
    if isinstance(counts, str):
        total = _compressed_total(counts, path, f"{place}.counts")
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
        total = sum(counts)
    else:
        raise InputFileError(path, f"{place}.counts", "an RLE string or a list of non-negative run lengths",
                             type(counts).__name__)  # fmt: skip
    if total != size[0] * size[1]:
        raise InputFileError(path, f"{place}.counts", f"run lengths adding up to {size[0]} x {size[1]}", total)
    return {"size": list(size), "counts": counts}


def _compressed_total(s: str, path, place: str) -> int:
    """The sum of the run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), checking
    every run is >= 0."""
    total, prev2, prev1, p, m = 0, 0, 0, 0, 0
    n = len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n or k > 12:
                raise InputFileError(path, place, "a complete RLE string", "a truncated one")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise InputFileError(path, place, "an RLE string of characters '0'..'o'", s[p])
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if m > 2:
            x += prev2
        if x < 0:
            raise InputFileError(path, place, "non-negative run lengths", x)
        total += x
        prev2, prev1 = prev1, x
        m += 1
    return total
