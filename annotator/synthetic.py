"""Synthetic "shapes" images with exact ground-truth masks, for tests, demos and the sample detector.

Each image is a textured background with a few filled shapes (circles, rotated rectangles, triangles) of
varied sizes and saturated colours. Shapes are painted without anti-aliasing, so every object's mask is
exactly the set of pixels painted with its colour that no later shape covered. Placements that would hide
too much of an earlier shape, split it in two or punch a hole in it are retried, so every visible mask is
one connected region without holes (one polygon per object in the YOLO-seg labels).

Dataset layout written by :func:`write_synthetic_dataset`::

    root/
      images/0000.jpg, images/sub/0000.jpg, ...   (numbered per folder: the same stem on purpose)
      labels/0000.txt, labels/sub/0000.txt, ...   (YOLO-seg: "class x1 y1 x2 y2 ..." normalized; empty file = no object)
      ground_truth_coco.json                      (exact RLE masks, ids from 1, category id = class id + 1)
      data.yaml                                   (Ultralytics dataset file with the class names)

    (``labels=None`` writes only images/ and the COCO JSON.)

Command line (writes the committed demo set)::

    python -m annotator.synthetic sample_data/shapes --n-images 8 --seed 0 --labels none

Example:
    >>> image, objects = make_shapes_image(0, image_hw=(64, 96), n_objects=(2, 2))
    >>> image.shape, image.dtype, len(objects)
    ((64, 96, 3), dtype('uint8'), 2)
    >>> obj = objects[0]
    >>> bool((image[obj.mask] == obj.colour_bgr).all())
    True
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SHAPE_NAMES: dict[int, str] = {0: "circle", 1: "rectangle", 2: "triangle"}
"""Class id -> class name of the synthetic shapes (also the sample detector's names)."""

BACKGROUNDS = ("noise", "plain")

_MAX_HIDDEN_FRACTION = 0.4  # a later shape may hide at most this fraction of an earlier one
_PLACEMENT_TRIES = 30


@dataclass(frozen=True, eq=False)
class GroundTruthObject:
    """One painted shape, as visible in the final image.

    Attributes:
        class_id: key of :data:`SHAPE_NAMES`.
        mask: ``(H, W)`` bool, exactly the pixels of this shape left visible after later shapes were painted.
        box_xyxy_px: tight box of ``mask`` in continuous pixel coordinates ``(x_min, y_min, x_max, y_max)``;
            a mask covering columns ``c0..c1`` gives ``x_min = c0``, ``x_max = c1 + 1``.
        colour_bgr: the shape's ``(b, g, r)`` fill colour.
    """

    class_id: int
    mask: np.ndarray
    box_xyxy_px: tuple[float, float, float, float]
    colour_bgr: tuple[int, int, int]

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())

    @property
    def class_name(self) -> str:
        return SHAPE_NAMES[self.class_id]


def mask_box_xyxy_px(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight ``xyxy`` box (continuous pixel coordinates) of a non-empty ``(H, W)`` bool mask.

    Example:
        >>> m = np.zeros((5, 6), bool); m[1:3, 2:5] = True
        >>> mask_box_xyxy_px(m)
        (2.0, 1.0, 5.0, 3.0)
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty: it has no box")
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _rng(rng_or_seed: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _background(rng: np.random.Generator, image_hw: tuple[int, int], kind: str) -> np.ndarray:
    """A low-saturation ``(H, W, 3)`` uint8 background: grey level plus smooth texture (for "noise")."""
    h, w = image_hw
    base = rng.uniform(60, 200)
    tint = rng.uniform(-12, 12, size=3)
    image = np.full((h, w, 3), base, np.float32) + tint.astype(np.float32)
    if kind == "noise":
        # Smooth blobs (blurred coarse noise) + a gentle gradient + fine grain, all nearly grey.
        coarse = rng.normal(0, 1, size=(max(2, h // 16), max(2, w // 16))).astype(np.float32)
        blobs = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(10, 25)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        gradient = ((xx / w) * math.cos(angle) + (yy / h) * math.sin(angle)) * rng.uniform(-30, 30)
        grain = rng.normal(0, 4, size=(h, w, 3)).astype(np.float32)
        image += (blobs + gradient)[..., None] + grain
    elif kind != "plain":
        raise ValueError(f"unknown background {kind!r}; use one of {BACKGROUNDS}")
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _random_colour_bgr(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour (HSV saturation >= 0.55), so it never equals a pixel of the greyish background."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(140, 256), rng.integers(110, 256)]]], np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _paint_shape_mask(rng: np.random.Generator, class_id: int, image_hw: tuple[int, int]) -> np.ndarray:
    """Full (unoccluded) ``(H, W)`` bool mask of one random shape of the given class, not anti-aliased."""
    h, w = image_hw
    side = min(h, w)
    size = rng.uniform(0.07, 0.22) * side  # "radius" in pixels
    margin = size * 0.6
    cx = rng.uniform(margin, w - margin)
    cy = rng.uniform(margin, h - margin)
    canvas = np.zeros((h, w), np.uint8)
    name = SHAPE_NAMES[class_id]
    if name == "circle":
        cv2.circle(canvas, (round(cx), round(cy)), max(2, round(size)), 1, thickness=-1, lineType=cv2.LINE_8)
    else:
        theta = rng.uniform(0, 2 * math.pi)
        if name == "rectangle":
            aspect = rng.uniform(0.45, 1.0)
            half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * [size, size * aspect]
        elif name == "triangle":
            angles = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(-0.3, 0.3, size=3)
            half = np.stack([np.cos(angles), np.sin(angles)], axis=1) * size * 1.15
        else:  # pragma: no cover - SHAPE_NAMES and this function must agree
            raise ValueError(f"no painter for shape {name!r}")
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        pts = half @ rot.T + [cx, cy]
        cv2.fillPoly(canvas, [np.rint(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return canvas.astype(bool)


def _is_simple_region(mask: np.ndarray) -> bool:
    """True when ``mask`` is one 8-connected region without holes (so one outer contour describes it)."""
    m = mask.astype(np.uint8)
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return len(contours) == 1 and hierarchy is not None and hierarchy[0][0][2] < 0


def make_shapes_image(
    rng_or_seed: np.random.Generator | int | None,
    image_hw: tuple[int, int] = (320, 320),
    n_objects: tuple[int, int] | int = (1, 5),
    *,
    background: str = "noise",
) -> tuple[np.ndarray, list[GroundTruthObject]]:
    """Paint one synthetic image and return it with its exact ground truth.

    Args:
        rng_or_seed: a ``numpy.random.Generator`` (advanced in place) or a seed.
        image_hw: ``(H, W)`` of the image.
        n_objects: ``(min, max)`` number of shapes, inclusive, or an exact count; 0 gives an empty image.
            Fewer shapes are painted when no valid placement is found (crowded small images).
        background: ``"noise"`` (smooth grey texture) or ``"plain"`` (one grey level).

    Returns:
        ``(image_bgr, objects)``: ``(H, W, 3)`` uint8 BGR image and the objects in painting order
        (each with its visible mask, tight box and colour).

    Example:
        >>> img, objs = make_shapes_image(3, image_hw=(48, 64), n_objects=0)
        >>> img.shape, objs
        ((48, 64, 3), [])
    """
    rng = _rng(rng_or_seed)
    h, w = int(image_hw[0]), int(image_hw[1])
    if h < 16 or w < 16:
        raise ValueError(f"image_hw must be at least (16, 16), got {image_hw}")
    lo, hi = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
    if not 0 <= lo <= hi:
        raise ValueError(f"n_objects must be (min, max) with 0 <= min <= max, got {n_objects}")
    image = _background(rng, (h, w), background)
    target = int(rng.integers(lo, hi + 1))
    min_area = max(12, int(0.002 * h * w))

    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    class_ids: list[int] = []
    colours: list[tuple[int, int, int]] = []
    for _ in range(target):
        for _try in range(_PLACEMENT_TRIES):
            class_id = int(rng.integers(0, len(SHAPE_NAMES)))
            new = _paint_shape_mask(rng, class_id, (h, w))
            if new.sum() < min_area:
                continue
            updated = [v & ~new for v in visible]
            if all(
                u.sum() >= (1 - _MAX_HIDDEN_FRACTION) * f.sum() and u.sum() >= min_area and _is_simple_region(u)
                for u, f in zip(updated, full_masks)
            ) and _is_simple_region(new):
                visible = updated + [new]
                full_masks.append(new)
                class_ids.append(class_id)
                colours.append(_random_colour_bgr(rng))
                break
    for mask, colour in zip(full_masks, colours):  # paint in order: later shapes cover earlier ones
        image[mask] = colour
    objects = [
        GroundTruthObject(class_id=c, mask=v, box_xyxy_px=mask_box_xyxy_px(v), colour_bgr=col)
        for c, v, col in zip(class_ids, visible, colours)
    ]
    return image, objects


def mask_to_polygon_xy_px(mask: np.ndarray) -> np.ndarray:
    """Outer contour of a one-region mask as an ``(K, 2)`` float64 array of pixel-centre ``(x, y)``.

    Vertices are pixel centres (``col + 0.5``, ``row + 0.5``), so the polygon lies half a pixel inside the
    mask boundary; use the COCO RLE when exact masks matter.

    Example:
        >>> m = np.zeros((6, 6), bool); m[1:4, 2:5] = True
        >>> mask_to_polygon_xy_px(m).tolist()
        [[2.5, 1.5], [2.5, 3.5], [4.5, 3.5], [4.5, 1.5]]
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        raise ValueError("mask is empty: it has no polygon")
    largest = max(contours, key=cv2.contourArea)
    return largest.reshape(-1, 2).astype(np.float64) + 0.5


def _yolo_seg_line(obj: GroundTruthObject, image_hw: tuple[int, int]) -> str:
    h, w = image_hw
    xy = mask_to_polygon_xy_px(obj.mask)
    if len(xy) < 3:  # a sliver: fall back to its box corners
        x0, y0, x1, y1 = obj.box_xyxy_px
        xy = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    xy_norm = np.clip(xy / [w, h], 0.0, 1.0)
    return " ".join([str(obj.class_id)] + [f"{v:.6f}" for v in xy_norm.ravel()])


def _yolo_box_line(obj: GroundTruthObject, image_hw: tuple[int, int]) -> str:
    h, w = image_hw
    x0, y0, x1, y1 = obj.box_xyxy_px
    cx, cy, bw, bh = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h
    return f"{obj.class_id} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}"


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_synthetic_dataset(
    root: Path | str,
    n_images: int,
    *,
    seed: int = 0,
    image_hw: tuple[int, int] = (320, 320),
    subdirs: tuple[str, ...] = ("", "sub"),
    empty_fraction: float = 0.2,
    ext: str = ".jpg",
    n_objects: tuple[int, int] = (1, 5),
    labels: str | None = "segment",
    jpeg_quality: int = 90,
) -> Path:
    """Write a synthetic shapes dataset (images, YOLO labels, COCO ground truth, data.yaml) under ``root``.

    Image ``i`` goes to ``images/<subdirs[i % len(subdirs)]>/`` and is numbered within its folder, so
    ``images/0000.jpg`` and ``images/sub/0000.jpg`` share a stem on purpose (a trap for stem-keyed writers).
    ``round(empty_fraction * n_images)`` images, chosen at random, have no object (their label file is empty).

    Args:
        root: output folder (created; existing files with the same names are overwritten).
        n_images: number of images.
        seed: makes the whole dataset reproducible.
        image_hw: ``(H, W)`` of every image.
        subdirs: sub-folders of ``images/`` to spread the images over ("" = ``images/`` itself).
        empty_fraction: fraction of images with no object.
        ext: ``".jpg"`` (small, lossy: colours change slightly, masks stay exact) or ``".png"`` (lossless:
            use it when exact pixel colours matter).
        n_objects: ``(min, max)`` shapes per non-empty image.
        labels: ``"segment"`` (YOLO-seg polygons) or ``"box"`` (YOLO detection boxes) in ``labels/`` with a
            ``data.yaml``; None writes neither (the COCO JSON alone), e.g. where ``labels/`` is an output folder.
        jpeg_quality: JPEG quality for ``".jpg"``.

    Returns:
        ``root`` as a Path.

    Example:
        >>> import tempfile
        >>> out = write_synthetic_dataset(Path(tempfile.mkdtemp()) / "shapes", 3, ext=".png")
        >>> sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png"))
        ['images/0000.png', 'images/0001.png', 'images/sub/0000.png']
    """
    root = Path(root)
    ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    if ext not in (".jpg", ".jpeg", ".png"):
        raise ValueError(f"ext must be '.jpg' or '.png', got {ext!r}")
    if labels not in ("segment", "box", None):
        raise ValueError(f"labels must be 'segment', 'box' or None, got {labels!r}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
    if n_images < 0 or not subdirs:
        raise ValueError(f"need n_images >= 0 and at least one subdir, got {n_images} and {subdirs!r}")
    from pycocotools import mask as mask_utils  # local: only the dataset writer needs it

    rng = np.random.default_rng(seed)
    n_empty = round(empty_fraction * n_images)
    empty = set(rng.permutation(n_images)[:n_empty].tolist())
    counters = {d: 0 for d in subdirs}
    coco_images, coco_annotations = [], []
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext != ".png" else []
    h, w = image_hw
    for i in range(n_images):
        sub = subdirs[i % len(subdirs)]
        stem = f"{counters[sub]:04d}"
        counters[sub] += 1
        rel_path = f"{sub}/{stem}{ext}" if sub else f"{stem}{ext}"
        image, objects = make_shapes_image(rng, image_hw, (0, 0) if i in empty else n_objects)
        image_path = root / "images" / rel_path
        image_path.parent.mkdir(parents=True, exist_ok=True)
        ok, encoded = cv2.imencode(ext, image, params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {image_path}")
        image_path.write_bytes(encoded.tobytes())
        if labels is not None:
            line = _yolo_seg_line if labels == "segment" else _yolo_box_line
            text = "".join(line(o, (h, w)) + "\n" for o in objects)
            _write_text_atomic(root / "labels" / Path(rel_path).with_suffix(".txt"), text)
        image_id = i + 1
        coco_images.append({"id": image_id, "file_name": rel_path, "height": h, "width": w})
        for obj in objects:
            rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = obj.box_xyxy_px
            coco_annotations.append(
                {
                    "id": len(coco_annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.class_id + 1,
                    "segmentation": rle,
                    "area": obj.area_px,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"annotator.synthetic shapes, seed={seed}", "version": "1"},
        "images": coco_images,
        "annotations": coco_annotations,
        "categories": [{"id": k + 1, "name": v, "supercategory": "shape"} for k, v in SHAPE_NAMES.items()],
    }
    _write_text_atomic(root / "ground_truth_coco.json", json.dumps(coco, separators=(",", ":")))
    if labels is not None:
        names = "".join(f"  {k}: {v}\n" for k, v in SHAPE_NAMES.items())
        # No "path:" key: Ultralytics then resolves train/val relative to this yaml's folder (not the CWD).
        _write_text_atomic(root / "data.yaml", f"train: images\nval: images\nnames:\n{names}")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m annotator.synthetic",
        description="Write a synthetic shapes dataset with exact ground truth (images/, labels/, "
        "ground_truth_coco.json, data.yaml).",
    )
    parser.add_argument("root", type=Path, help="output folder")
    parser.add_argument("--n-images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-hw", type=int, nargs=2, default=(320, 320), metavar=("H", "W"))
    parser.add_argument("--subdirs", nargs="+", default=["", "sub"], help='sub-folders of images/ ("" = top)')
    parser.add_argument("--empty-fraction", type=float, default=0.2)
    parser.add_argument("--ext", default=".jpg", choices=[".jpg", ".png"])
    parser.add_argument(
        "--labels", default="segment", choices=["segment", "box", "none"], help="YOLO label files to write"
    )
    args = parser.parse_args(argv)
    root = write_synthetic_dataset(
        args.root,
        args.n_images,
        seed=args.seed,
        image_hw=tuple(args.image_hw),
        subdirs=tuple(args.subdirs),
        empty_fraction=args.empty_fraction,
        ext=args.ext,
        labels=None if args.labels == "none" else args.labels,
    )
    print(f"wrote {args.n_images} images to {root}")


if __name__ == "__main__":
    main()
