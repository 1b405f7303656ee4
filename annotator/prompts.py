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

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotator.errors import ConfigError, InputFileError
from annotator.records import Detections, PolygonInstance
from annotator.validation.coco import load_coco_prompts
from annotator.validation.records import LabelObject, clip_box_px, clip_points_px, names_map
from annotator.validation.yolo import label_files, load_yolo_file


@dataclass(frozen=True)
class LabelPrompts:
    """One image's prompts: ``boxes`` for SAM, and polygons ``kept`` as they are."""

    boxes: Detections
    kept: tuple[PolygonInstance, ...] = ()


class LabelBoxSource:
    """Existing labels (YOLO tree or COCO file) as per-image prompts; stands where the detector stands.

    Every file is validated (:mod:`annotator.validation`): a malformed row, a class id outside the names, a box
    of no size or outside the image, a special file named ``*.txt`` is one :class:`InputFileError` line.

    Args:
        labels: a folder of YOLO ``.txt`` label files mirroring ``data``, or a COCO ``.json`` file.
        data_root: the folder the images' ``rel_path`` are relative to.
        check_all: read and validate every label file of a YOLO tree now (before a run starts), not only the
            ones named per image later.
    """

    input_spec = None  # no detector letterbox: the prompts are read, not computed
    reads_labels = True

    def __init__(self, labels: Path, data_root: Path, *, check_all: bool = False) -> None:
        self.labels = Path(labels)
        self.data_root = Path(data_root)
        if self.labels.is_file() and self.labels.suffix.lower() == ".json":
            coco = load_coco_prompts(self.labels)
            self._coco: dict | None = coco.by_file
            self.names = coco.names
        elif self.labels.is_dir():
            self._coco = None
            names = _yaml_names(self.labels)
            if names and check_all:
                for f in label_files(self.labels):
                    load_yolo_file(f, set(names))
            self.names = names or _numbered_names(self.labels)
        elif self.labels.exists() and not self.labels.is_dir() and not self.labels.is_file():
            from annotator.validation.files import special_kind

            raise InputFileError(self.labels, "", "a folder or a regular .json file", special_kind(os.stat(self.labels).st_mode))
        else:
            raise ConfigError(f"prompt_labels {self.labels}: pass a folder of YOLO label .txt files or a COCO .json file")

    def for_image(self, rel_path: str, image_hw: tuple[int, int]) -> LabelPrompts:
        """The prompts of one image (``rel_path`` relative to ``data``; ``image_hw`` its upright size)."""
        if self._coco is not None:
            objs, where = self._coco.get(rel_path, ()), self.labels
        else:
            path = self.labels / Path(rel_path).with_suffix(".txt")
            objs = self._yolo_objects(path, image_hw) if os.path.lexists(path) else ()
            where = path
        boxes, kept = [], []
        for k, o in enumerate(objs):
            place = f"{rel_path} object {k}"
            if o.box_xyxy_px is not None:
                boxes.append((o.class_id, clip_box_px(o.box_xyxy_px, image_hw, where, place), o.attributes))
            else:
                parts = [clip_points_px(p, image_hw, where, place) for p in o.parts_xy_px]
                kept.append(_polygon_instance(o.class_id, parts, image_hw, o.attributes))
        if not boxes:
            return LabelPrompts(Detections.empty(), tuple(kept))
        xyxy = np.asarray([b for _, b, _ in boxes], np.float32).reshape(-1, 4)
        extras = tuple(e for _, _, e in boxes)
        dets = Detections(xyxy, np.asarray([c for c, _, _ in boxes], np.int64), np.ones(len(boxes), np.float32),
                          attributes=extras if any(e is not None for e in extras) else None)  # fmt: skip
        return LabelPrompts(dets, tuple(kept))

    def _yolo_objects(self, path: Path, image_hw: tuple[int, int]) -> list[LabelObject]:
        return [r.to_pixels(image_hw) for r in load_yolo_file(path, set(self.names))]


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
    """Class names from a ``data.yaml`` beside the labels folder (or inside it), else an empty dict; the file
    is read with the alias-free YAML loader and its names validated."""
    from annotator.validation.yaml_safe import load_yaml_file

    for cand in (labels_dir.parent / "data.yaml", labels_dir / "data.yaml", labels_dir.parent.parent / "data.yaml"):
        if os.path.lexists(cand):
            doc = load_yaml_file(cand)
            if not isinstance(doc, dict):
                raise InputFileError(cand, "top level", "a mapping with names", type(doc).__name__)
            if doc.get("names") is not None:
                return names_map(doc["names"], cand)
    return {}


def _numbered_names(labels_dir: Path) -> dict[int, str]:
    """``class<i>`` names up to the largest class id in the tree (no data.yaml found); every file validated."""
    top = -1
    for f in label_files(labels_dir):
        for r in load_yolo_file(f):
            top = max(top, r.class_id)
    return {i: f"class{i}" for i in range(top + 1)}
