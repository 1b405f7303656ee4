"""Point prompts from a file (``prompts: points``): clicks per object -> one SAM mask per object, class carried over.

The file (``prompt_points``) is JSON, pixel coordinates of the upright (EXIF-applied) image, ``x`` right, ``y``
down, image paths relative to ``data`` (``/`` separators)::

    {
      "names": {"0": "cat", "1": "dog"},            # or ["cat", "dog"]; optional (then classes are ids)
      "images": {
        "sub/a.jpg": [
          {"class": "cat", "points": [[120, 80], [140, 95]], "labels": [1, 0]},
          {"class": 1, "points": [[300, 200]], "box": [250, 150, 380, 260]}
        ]
      }
    }

Each object is one SAM prompt, one mask: ``points`` (``[x, y]`` pairs), ``labels`` (one per point: 1 on the
object, 0 off it; default all 1) and an optional ``box`` ``[x1, y1, x2, y2]``, at least one point or a box.
``class`` is an id or a name from ``names``. An image missing from the file has no objects (an empty label
file); an entry for an image that is not under ``data`` is ignored. Objects get ``det_conf = 1.0`` (a person
placed them). A point-only object has no box prompt: its record's box is the box of its points until the mask's
tight box replaces it (:class:`~annotator.mask_upsample.MaskFinisher`).

Same as Ultralytics' ``SAM(img, points=[[x, y], ...], labels=[1, 0, ...])`` for one object, and
``points=[[[x, y], ...], ...]`` for several objects with the same number of points (tested).

Example:
    >>> src = PointPromptSource(Path("clicks.json"), Path("datasets/pets"))  # doctest: +SKIP
    >>> d = src.for_image("sub/a.jpg", (480, 640)).boxes  # doctest: +SKIP
    >>> d.points_xy_px.shape, d.point_labels.tolist()  # doctest: +SKIP
    ((2, 2, 2), [[1, 0], [1, -1]])
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from annotator.errors import ConfigError
from annotator.prompts import LabelPrompts
from annotator.records import Detections


class PointPromptSource:
    """A ``prompt_points`` JSON file as per-image prompts; stands where the detector stands.

    Args:
        path: the JSON file (format in the module docstring).
        data_root: the folder the images' ``rel_path`` are relative to.

    Raises:
        ConfigError: one line naming the image and object that is malformed and what to fix.
    """

    input_spec = None  # no detector letterbox: the prompts are read, not computed
    reads_labels = True

    def __init__(self, path: Path, data_root: Path) -> None:
        self.path = Path(path)
        self.data_root = Path(data_root)
        self.names, self._by_file = load_points_file(self.path)

    def for_image(self, rel_path: str, image_hw: tuple[int, int]) -> LabelPrompts:
        """The prompts of one image (``rel_path`` relative to ``data``; ``image_hw`` its upright size)."""
        objs = self._by_file.get(rel_path, [])
        if not objs:
            return LabelPrompts(Detections.empty())
        h, w = image_hw
        for k, (_, pts, _, box) in enumerate(objs):
            xy = np.concatenate([pts, np.asarray(box, np.float64).reshape(-1, 2)]) if box is not None else pts
            if len(xy) and ((xy < 0).any() or (xy[:, 0] > w).any() or (xy[:, 1] > h).any()):
                raise ConfigError(
                    f"prompt_points {self.path}: images[{rel_path!r}][{k}] lies outside the {w}x{h} image: "
                    f"coordinates are pixels of the upright image, not normalised"
                )
        k_max = max(len(p) for _, p, _, _ in objs)
        n = len(objs)
        points = np.zeros((n, k_max, 2), np.float32)
        labels = np.full((n, k_max), -1, np.int32)
        xyxy = np.zeros((n, 4), np.float32)
        has_box = np.zeros(n, bool)
        for i, (_, pts, lab, box) in enumerate(objs):
            points[i, : len(pts)] = pts
            labels[i, : len(lab)] = lab
            if box is not None:
                xyxy[i], has_box[i] = box, True
            else:  # not a prompt: the box of the points (the mask's box replaces it, see MaskFinisher)
                pos = pts[lab == 1]
                xyxy[i] = (*pos.min(axis=0), *pos.max(axis=0))
        dets = Detections(
            xyxy, np.asarray([c for c, *_ in objs], np.int64), np.ones(n, np.float32),
            points_xy_px=points, point_labels=labels, box_is_prompt=has_box,
        )  # fmt: skip
        return LabelPrompts(dets)


def load_points_file(path: Path) -> tuple[dict[int, str], dict[str, list]]:
    """Parse and check a ``prompt_points`` file: ``(names, {rel_path: [(class_id, points (K, 2), labels (K,),
    box or None), ...]})``; one-line :class:`ConfigError` on the first problem."""
    where = f"prompt_points {path}"
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where} is not a readable JSON file ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), dict):
        raise ConfigError(f'{where}: expected an object {{"names": ..., "images": {{"rel/path.jpg": [objects]}}}}')
    names = _names(doc.get("names"), where)
    by_name = {v: k for k, v in names.items()}
    by_file: dict[str, list] = {}
    for rel, objs in doc["images"].items():
        if not isinstance(objs, list):
            raise ConfigError(f"{where}: images[{rel!r}] must be a list of objects, got {type(objs).__name__}")
        key = os.path.normpath(rel).replace(os.sep, "/")
        by_file[key] = [_object(o, f"{where}: images[{rel!r}][{k}]", names, by_name) for k, o in enumerate(objs)]
    if not names:
        top = max((c for objs in by_file.values() for c, *_ in objs), default=-1)
        names = {i: f"class{i}" for i in range(top + 1)}
    return names, by_file


def _names(raw, where: str) -> dict[int, str]:
    if raw is None:
        return {}
    try:
        if isinstance(raw, list):
            return dict(enumerate(map(str, raw)))
        if isinstance(raw, dict):
            return {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        pass
    raise ConfigError(f'{where}: "names" must be a list of names or an object {{"0": "name", ...}}')


def _object(o, where: str, names: dict[int, str], by_name: dict[str, int]) -> tuple:
    if not isinstance(o, dict):
        raise ConfigError(f'{where}: an object is {{"class": ..., "points": [[x, y], ...]}}, got {type(o).__name__}')
    unknown = set(o) - {"class", "points", "labels", "box"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: class, points, labels, box)")
    c = o.get("class")
    if isinstance(c, str) and c in by_name:
        class_id = by_name[c]
    elif isinstance(c, int) and not isinstance(c, bool) and c >= 0 and (not names or c in names):
        class_id = c
    else:
        raise ConfigError(f"{where}: class {c!r} is neither a class id nor a name in names {sorted(by_name)}")
    try:
        pts = np.asarray(o.get("points", []), np.float64).reshape(-1, 2)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: points must be a list of [x, y] pairs") from None
    labels = o.get("labels", [1] * len(pts))
    ok = isinstance(labels, list) and len(labels) == len(pts)
    if not ok or any(v not in (0, 1) or isinstance(v, bool) for v in labels):
        n = len(pts)
        raise ConfigError(f"{where}: labels must hold one 1 (on the object) or 0 (off it) per point ({n} points)")
    box = o.get("box")
    if box is not None:
        try:
            box = [float(v) for v in box]
        except (TypeError, ValueError):
            box = []
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ConfigError(f"{where}: box must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2")
    if box is None and not (np.asarray(labels) == 1).any():
        raise ConfigError(f"{where}: give at least one point with label 1 (on the object), or a box")
    if not all(math.isfinite(v) for v in pts.reshape(-1)):
        raise ConfigError(f"{where}: points must be finite numbers")
    return class_id, pts, np.asarray(labels, np.int32), box
