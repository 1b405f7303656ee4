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

from pathlib import Path

import numpy as np

from annotator.prompts import LabelPrompts
from annotator.records import Detections
from annotator.validation.points import load_points
from annotator.validation.records import clip_box_px, clip_points_px


class PointPromptSource:
    """A ``prompt_points`` JSON file as per-image prompts; stands where the detector stands.

    Args:
        path: the JSON file (format in the module docstring).
        data_root: the folder the images' ``rel_path`` are relative to.

    Raises:
        InputFileError: one line naming the file, the image and object that is malformed and what to fix
            (:mod:`annotator.validation.points`).
    """

    input_spec = None  # no detector letterbox: the prompts are read, not computed
    reads_labels = True

    def __init__(self, path: Path, data_root: Path) -> None:
        self.path = Path(path)
        self.data_root = Path(data_root)
        self.names, self._by_file = load_points_file(self.path)

    def for_image(self, rel_path: str, image_hw: tuple[int, int]) -> LabelPrompts:
        """The prompts of one image (``rel_path`` relative to ``data``; ``image_hw`` its upright size).

        Points and boxes more than 1% of a side outside the image are an InputFileError (this image fails);
        within that, they are clipped onto the image."""
        objs = self._by_file.get(rel_path, ())
        if not objs:
            return LabelPrompts(Detections.empty())
        place = f"images[{rel_path!r}]"
        objs = [
            (o.class_id, clip_points_px(o.points_xy_px, image_hw, self.path, f"{place}[{k}].points"), o.labels,
             None if o.box_xyxy_px is None else clip_box_px(o.box_xyxy_px, image_hw, self.path, f"{place}[{k}].box"))
            for k, o in enumerate(objs)
        ]  # fmt: skip
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


def load_points_file(path: Path) -> tuple[dict[int, str], dict[str, tuple]]:
    """Parse and check a ``prompt_points`` file: ``(names, {rel_path: (PointObject, ...)})``; a one-line
    :class:`~annotator.errors.InputFileError` on the first problem (see :mod:`annotator.validation.points`)."""
    pf = load_points(path)
    return pf.names, pf.by_image
