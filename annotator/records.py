"""Typed records that flow between the pipeline stages.

Conventions, used by every field name in the package:

* ``*_hw``       -- ``(height, width)`` in pixels, always in that order.
* ``*_px``       -- pixel coordinates in the (EXIF-upright) image frame, ``x`` right, ``y`` down,
                    continuous coordinates: pixel ``(col, row)`` covers ``[col, col+1) x [row, row+1)``.
* ``*_norm``     -- the same coordinates divided by image width (x) and height (y): in ``[0, 1]``.
* ``xyxy``       -- box as ``(x_min, y_min, x_max, y_max)``; ``xywh`` -- ``(x_min, y_min, width, height)``.
* ``xy``         -- polygon vertices as an ``(N, 2)`` array of ``(x, y)``.

A detection keeps its identity to the end: one :class:`Instance` carries the class id, the detector
confidence, the segmenter score and the mask of one detection together, so nothing is ever re-paired by
list position after a filter.

Records are frozen dataclasses; stages return new records instead of mutating their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np


class ImageStatus(str, Enum):
    """Outcome of one input image. The string values are stable: they appear in reports and ledgers."""

    OK = "ok"  # processed, at least one instance written
    EMPTY = "empty"  # processed, no instance (an empty label file is written)
    DECODE_ERROR = "decode_error"  # the file could not be decoded as an image
    TOO_SMALL = "too_small"  # decoded, but smaller than the minimum side
    TOO_LARGE = "too_large"  # refused from its header: more pixels than the configured limit
    UNSUPPORTED = "unsupported"  # not an image format we read
    FAILED = "failed"  # any other error while processing (the reason says which)


class DropReason(str, Enum):
    """Why a detection (a prompt box, a point prompt, an "everything" candidate, a tracked object in a frame)
    did not become a label row. The string values are stable: they are the keys of ``ImageResult.dropped``,
    of ``run_report.json``'s ``dropped`` and of the ledger's ``dropped_json``.

    Candidates the detector itself never returned (under ``conf``, removed by its NMS, outside ``classes``) and
    the ``prompts: everything`` grid points that its own thresholds and NMS discard are not detections: they
    are not counted.
    """

    SAM_SCORE = "below_sam_min_score"  # the segmenter's score is <= sam_min_score
    EMPTY_MASK = "empty_mask"  # the mask covers no pixel of the image
    MIN_AREA = "below_min_area_px"  # every part of the mask is smaller than min_area_px (polygon area)
    DEGENERATE = "degenerate_polygon"  # no part gives a polygon of >= 3 distinct vertices (a line, a pixel)


#: every drop reason, in the order reports list them
DROP_REASONS: tuple[str, ...] = tuple(r.value for r in DropReason)


def add_dropped(into: dict[str, int], reason: DropReason | str, n: int = 1) -> None:
    """Count ``n`` detections dropped for ``reason`` in the per-image ``{reason: count}`` dict ``into``.

    Example:
        >>> d = {}; add_dropped(d, DropReason.MIN_AREA); add_dropped(d, "empty_mask", 2); d
        {'below_min_area_px': 1, 'empty_mask': 2}
    """
    key = DropReason(reason).value
    if n:
        into[key] = into.get(key, 0) + int(n)


@dataclass(frozen=True)
class SourceItem:
    """One input file found under the data root.

    Attributes:
        path: absolute path of the file.
        rel_path: POSIX path relative to the data root, e.g. ``"sub/a.jpg"``; the item's stable key.
    """

    path: Path
    rel_path: str


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded to 8-bit BGR (OpenCV's order), EXIF orientation applied.

    Attributes:
        item: where it came from.
        image_bgr: ``(H, W, 3)`` uint8 array.
    """

    item: SourceItem
    image_bgr: np.ndarray

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.image_bgr.shape[0]), int(self.image_bgr.shape[1])


@dataclass(frozen=True)
class Detections:
    """Detector output for one image. All arrays share the first dimension ``N`` (possibly 0).

    Attributes:
        xyxy_px: ``(N, 4)`` float32 boxes in pixels of the original image.
        class_ids: ``(N,)`` int64 detector class ids.
        det_conf: ``(N,)`` float32 detector confidences in ``[0, 1]``.

    Optional per-object prompts beyond the box (None: box prompts only, the detector's case):

        points_xy_px: ``(N, K, 2)`` float32 point prompts in pixels of the original (upright) image; rows
            shorter than ``K`` are padded (label -1).
        point_labels: ``(N, K)`` int32: 1 a point on the object, 0 a point off it, -1 padding (not a point).
        box_is_prompt: ``(N,)`` bool: False where ``xyxy_px`` is *not* a prompt (a point-only object: its
            ``xyxy_px`` is the box of its points, replaced by the mask's box once segmented).
        det_masks: the detector's own masks (a ``-seg`` detector), one :class:`MaskCrop` per object, or None.
        attributes: per object, the extra fields of the label it came from (``prompts: boxes`` from COCO: its
            ``attributes`` and any non-standard keys), carried to the COCO output; or None.

    Example:
        >>> d = Detections(np.array([[0, 0, 9, 9]], np.float32), np.array([2]), np.ones(1, np.float32),
        ...                points_xy_px=np.array([[[4, 4], [0, 0]]], np.float32), point_labels=np.array([[1, -1]]))
        >>> len(d), d.points_xy_px.shape
        (1, (1, 2, 2))
    """

    xyxy_px: np.ndarray
    class_ids: np.ndarray
    det_conf: np.ndarray
    points_xy_px: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box_is_prompt: np.ndarray | None = None
    det_masks: tuple[MaskCrop, ...] | None = None
    attributes: tuple[dict | None, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.class_ids)
        if self.xyxy_px.shape != (n, 4) or self.det_conf.shape != (n,):
            raise ValueError(
                f"Detections arrays disagree: xyxy_px {self.xyxy_px.shape}, class_ids {self.class_ids.shape}, "
                f"det_conf {self.det_conf.shape}; expected (N, 4), (N,), (N,)"
            )
        if (self.points_xy_px is None) != (self.point_labels is None):
            raise ValueError("Detections: points_xy_px and point_labels go together (both or neither)")
        if self.points_xy_px is not None:
            k = self.point_labels.shape[1] if self.point_labels.ndim == 2 else -1
            if self.points_xy_px.shape != (n, k, 2) or self.point_labels.shape != (n, k):
                raise ValueError(
                    f"Detections points disagree: points_xy_px {self.points_xy_px.shape}, point_labels "
                    f"{self.point_labels.shape}; expected (N, K, 2), (N, K) with N = {n}"
                )
        if self.box_is_prompt is not None and self.box_is_prompt.shape != (n,):
            raise ValueError(f"Detections: box_is_prompt has shape {self.box_is_prompt.shape}, expected ({n},)")
        if self.det_masks is not None and len(self.det_masks) != n:
            raise ValueError(f"Detections: {len(self.det_masks)} det_masks for {n} objects")
        if self.attributes is not None and len(self.attributes) != n:
            raise ValueError(f"Detections: {len(self.attributes)} attributes for {n} objects")

    def n_points(self) -> np.ndarray:
        """``(N,)`` int: real (non-padding) points of each object (zeros without point prompts)."""
        if self.point_labels is None:
            return np.zeros(len(self), np.int64)
        return (self.point_labels >= 0).sum(axis=1).astype(np.int64)

    def boxes_used(self) -> np.ndarray:
        """``(N,)`` bool: whether each object's box is a prompt."""
        return np.ones(len(self), bool) if self.box_is_prompt is None else self.box_is_prompt.astype(bool)

    def __len__(self) -> int:
        return len(self.class_ids)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0,), np.float32))


@dataclass(frozen=True)
class MaskCrop:
    """A binary mask stored as its tight crop, so memory scales with the object, not the image.

    Attributes:
        bitmap: ``(h, w)`` bool array, the mask inside its bounding box (``h, w >= 0``).
        origin_xy: ``(x0, y0)`` pixel offset of ``bitmap[0, 0]`` in the image.
        image_hw: ``(H, W)`` of the full image.

    Example:
        >>> full = np.zeros((4, 5), bool); full[1:3, 2:4] = True
        >>> crop = MaskCrop.from_full(full)
        >>> crop.origin_xy, crop.bitmap.shape, crop.area_px
        ((2, 1), (2, 2), 4)
        >>> bool((crop.to_full() == full).all())
        True
    """

    bitmap: np.ndarray
    origin_xy: tuple[int, int]
    image_hw: tuple[int, int]

    @classmethod
    def from_full(cls, mask: np.ndarray) -> MaskCrop:
        """Crop an ``(H, W)`` bool mask to the bounding box of its True pixels."""
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return cls(np.zeros((0, 0), bool), (0, 0), (mask.shape[0], mask.shape[1]))
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return cls(np.ascontiguousarray(mask[y0:y1, x0:x1]), (x0, y0), (mask.shape[0], mask.shape[1]))

    def to_full(self) -> np.ndarray:
        """The ``(H, W)`` bool mask."""
        full = np.zeros(self.image_hw, dtype=bool)
        h, w = self.bitmap.shape
        x0, y0 = self.origin_xy
        full[y0 : y0 + h, x0 : x0 + w] = self.bitmap
        return full

    @property
    def area_px(self) -> int:
        return int(self.bitmap.sum())

    @property
    def bbox_xywh_px(self) -> tuple[float, float, float, float]:
        """Tight box of the mask pixels as ``(x, y, w, h)`` (COCO convention)."""
        h, w = self.bitmap.shape
        return (float(self.origin_xy[0]), float(self.origin_xy[1]), float(w), float(h))


@dataclass(frozen=True)
class Instance:
    """One detection and its mask, kept together from the detector to the writers.

    Attributes:
        class_id: detector class id.
        det_conf: detector confidence in ``[0, 1]``.
        box_xyxy_px: ``(4,)`` float32 detector box (the segmenter's prompt).
        sam_score: the segmenter's own quality score for this mask (predicted IoU).
        mask: the mask as a tight crop.
        det_index: position of the detection in the detector's output for this image (for tracing).
        attributes: the extra fields of the label this object came from (see :class:`Detections`), or None.
    """

    class_id: int
    det_conf: float
    box_xyxy_px: np.ndarray
    sam_score: float
    mask: MaskCrop
    det_index: int
    attributes: dict | None = None


@dataclass(frozen=True)
class PolygonInstance:
    """An instance after polygonization: what the format writers consume.

    Attributes:
        class_id, det_conf, sam_score: carried over from :class:`Instance`.
        polygons_xy_px: list of ``(K, 2)`` float64 arrays, ``K >= 3``, every vertex inside
            ``[0, W] x [0, H]``; one array per part of the mask, largest first.
        area_px: mask area in pixels (not the polygon or box area).
        bbox_xywh_px: tight box of the mask pixels.
        rle: COCO RLE ``{"size": [H, W], "counts": str}`` of the mask, or None when not requested.
        track_id: the object's id within its video (video frames only; None for images).
        attributes: extra COCO fields carried from the prompt label (``prompts: boxes``), or None.
    """

    class_id: int
    det_conf: float
    sam_score: float
    polygons_xy_px: list[np.ndarray]
    area_px: int
    bbox_xywh_px: tuple[float, float, float, float]
    rle: dict | None = None
    track_id: int | None = None
    attributes: dict | None = None


@dataclass(frozen=True)
class ImageResult:
    """Everything known about one input after the pipeline ran on it.

    Attributes:
        item: the source file.
        status: outcome (see :class:`ImageStatus`).
        image_hw: ``(H, W)`` of the decoded image, or None when it could not be decoded.
        instances: polygonized instances (empty unless status is OK).
        reason: one line explaining a non-OK, non-EMPTY status.
        seconds: wall seconds spent per stage on this image, e.g. ``{"decode": 0.01}``.
        dropped: detections of this image that did not become a label row, by reason (:data:`DROP_REASONS`),
            e.g. ``{"below_min_area_px": 2}``; only non-zero counts are present.
    """

    item: SourceItem
    status: ImageStatus
    image_hw: tuple[int, int] | None = None
    instances: tuple[PolygonInstance, ...] = ()
    reason: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
