"""Existing labels as SAM prompts (``prompts: boxes``): a YOLO labels tree or a COCO file -> box prompts.

Per image, each box becomes a SAM box prompt; a row (YOLO) or annotation (COCO) that is already a polygon is
kept as it is: decided per row, not per dataset, so a mixed tree (some objects outlined, some boxed) comes out
fully segmented. The class of every object carries over; the class names come from the dataset's
``data.yaml`` (beside the labels folder, or one level up) or the COCO categories.

* YOLO tree: ``<labels>/<rel path of the image with .txt>``, rows ``class cx cy w h`` (a box) or
  ``class x1 y1 x2 y2 ...`` (>= 3 points: a polygon), normalised as Ultralytics writes them. A missing label
  file is an image without objects.
* COCO file: images matched by ``file_name`` = the image's path relative to ``data``; an annotation with a
  polygon ``segmentation`` is kept, one with only a ``bbox`` (or an empty segmentation) is a prompt.
  Category ids map to class ids ``0..n-1`` in id order. An annotation's other fields (``attributes``,
  ``occluded``, a source id...) are carried to the output COCO annotation of the same object (ours win on a
  name clash: ``score``, ``sam_score``); YOLO rows have none.

Kept polygons get ``det_conf = sam_score = 1.0`` (human labels). Boxes are prompts in pixels of the image.

Example:
    >>> src = LabelBoxSource(Path("datasets/street/labels"), Path("datasets/street/images"))  # doctest: +SKIP
    >>> p = src.for_image("sub/a.jpg", (480, 640))  # doctest: +SKIP
    >>> p.boxes.xyxy_px.shape, len(p.kept)  # doctest: +SKIP
    ((3, 4), 1)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotator.errors import ConfigError
from annotator.records import Detections, PolygonInstance


@dataclass(frozen=True)
class LabelPrompts:
    """One image's prompts: ``boxes`` for SAM, and polygons ``kept`` as they are."""

    boxes: Detections
    kept: tuple[PolygonInstance, ...] = ()


class LabelBoxSource:
    """Existing labels (YOLO tree or COCO file) as per-image prompts; stands where the detector stands.

    Args:
        labels: a folder of YOLO ``.txt`` label files mirroring ``data``, or a COCO ``.json`` file.
        data_root: the folder the images' ``rel_path`` are relative to.
    """

    input_spec = None  # no detector letterbox: the prompts are read, not computed
    reads_labels = True

    def __init__(self, labels: Path, data_root: Path) -> None:
        self.labels = Path(labels)
        self.data_root = Path(data_root)
        if self.labels.is_file() and self.labels.suffix.lower() == ".json":
            self._coco = _load_coco(self.labels)
            self.names = self._coco["names"]
        elif self.labels.is_dir():
            self._coco = None
            self.names = _yaml_names(self.labels) or _numbered_names(self.labels)
        else:
            raise ConfigError(f"prompt_labels {self.labels}: pass a folder of YOLO label .txt files or a COCO .json file")

    def for_image(self, rel_path: str, image_hw: tuple[int, int]) -> LabelPrompts:
        """The prompts of one image (``rel_path`` relative to ``data``; ``image_hw`` its upright size)."""
        rows = self._coco_rows(rel_path) if self._coco is not None else self._yolo_rows(rel_path, image_hw)
        boxes, kept = [], []
        for class_id, kind, values, extra in rows:
            if kind == "box":
                boxes.append((class_id, values, extra))
            else:
                kept.append(_polygon_instance(class_id, values, image_hw, extra))
        if not boxes:
            return LabelPrompts(Detections.empty(), tuple(kept))
        xyxy = np.asarray([b for _, b, _ in boxes], np.float32).reshape(-1, 4)
        extras = tuple(e for _, _, e in boxes)
        dets = Detections(xyxy, np.asarray([c for c, _, _ in boxes], np.int64), np.ones(len(boxes), np.float32),
                          attributes=extras if any(e is not None for e in extras) else None)  # fmt: skip
        return LabelPrompts(dets, tuple(kept))

    def _yolo_rows(self, rel_path: str, image_hw: tuple[int, int]) -> list:
        path = self.labels / Path(rel_path).with_suffix(".txt")
        if not path.is_file():
            return []
        h, w = image_hw
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            vals = line.split()
            if not vals:
                continue
            try:
                c, v = int(vals[0]), np.asarray(vals[1:], np.float64)
            except ValueError:
                raise ConfigError(f"{path}:{n}: not a YOLO label row ({line[:60]!r})") from None
            if len(v) == 4:
                cx, cy, bw, bh = v * (w, h, w, h)
                rows.append((c, "box", [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], None))
            elif len(v) >= 6 and len(v) % 2 == 0:
                rows.append((c, "polygon", [v.reshape(-1, 2) * (w, h)], None))
            else:
                raise ConfigError(f"{path}:{n}: a row holds 4 box values or >= 3 x,y points, got {len(v)} values")
        return rows

    def _coco_rows(self, rel_path: str) -> list:
        return self._coco["by_file"].get(rel_path, [])


def _polygon_instance(
    class_id: int, parts: list[np.ndarray], image_hw: tuple[int, int], attributes: dict | None = None
) -> PolygonInstance:
    """A kept polygon row: its parts in pixels (largest first, as the polygonizer orders them), area by the
    shoelace formula, box of the vertices; a COCO annotation's extra fields carried as ``attributes``."""

    def area(xy: np.ndarray) -> float:
        return 0.5 * abs(float(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1))))

    parts = sorted((np.asarray(p, np.float64).reshape(-1, 2) for p in parts), key=area, reverse=True)
    allxy = np.concatenate(parts)
    (x0, y0), (x1, y1) = allxy.min(axis=0), allxy.max(axis=0)
    box = (float(x0), float(y0), float(x1 - x0), float(y1 - y0))
    return PolygonInstance(int(class_id), 1.0, 1.0, parts, int(round(sum(map(area, parts)))), box,
                           attributes=attributes)  # fmt: skip


def _yaml_names(labels_dir: Path) -> dict[int, str]:
    """Class names from a ``data.yaml`` beside the labels folder (or inside it), else an empty dict."""
    import yaml

    for cand in (labels_dir.parent / "data.yaml", labels_dir / "data.yaml", labels_dir.parent.parent / "data.yaml"):
        if cand.is_file():
            names = (yaml.safe_load(cand.read_text(encoding="utf-8")) or {}).get("names")
            if isinstance(names, list):
                return dict(enumerate(map(str, names)))
            if isinstance(names, dict):
                return {int(k): str(v) for k, v in names.items()}
    return {}


def _numbered_names(labels_dir: Path) -> dict[int, str]:
    """``class<i>`` names up to the largest class id in the tree (no data.yaml found)."""
    top = -1
    for f in labels_dir.rglob("*.txt"):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.split() and line.split()[0].isdigit():
                top = max(top, int(line.split()[0]))
    return {i: f"class{i}" for i in range(top + 1)}


#: the fields of a COCO annotation the tool writes itself; any other (``attributes``, ``occluded``, a source id...)
#: is carried to the output annotation of the same object
_COCO_ANNOTATION_KEYS = frozenset({"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"})


def _load_coco(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        cats = sorted(doc["categories"], key=lambda c: c["id"])
        images = {im["id"]: im["file_name"] for im in doc["images"]}
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"prompt_labels {path} is not a COCO file ({type(e).__name__}: {e})") from None
    cat_to_class = {c["id"]: k for k, c in enumerate(cats)}
    by_file: dict[str, list] = {}
    for a in doc.get("annotations", []):
        rel = os.path.normpath(images[a["image_id"]]).replace(os.sep, "/")
        c = cat_to_class[a["category_id"]]
        extra = {k: v for k, v in a.items() if k not in _COCO_ANNOTATION_KEYS} or None
        seg = a.get("segmentation")
        parts = [np.asarray(p, np.float64).reshape(-1, 2) for p in seg if len(p) >= 6] if isinstance(seg, list) else []
        if parts:  # one object in one or several parts (COCO polygons carry no holes)
            by_file.setdefault(rel, []).append((c, "polygon", parts, extra))
        elif a.get("bbox"):
            x, y, w, h = a["bbox"]
            by_file.setdefault(rel, []).append((c, "box", [x, y, x + w, y + h], extra))
    return {"names": {k: str(c["name"]) for k, c in enumerate(cats)}, "by_file": by_file}
