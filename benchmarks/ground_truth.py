"""Ground-truth stand-ins for the benchmark: synthetic images with their truth, stub detectors, realistic masks.

* :func:`make_synthetic_images` writes shapes images and keeps their boxes and masks (:class:`GroundTruth`);
* ``--boxes gt``: :class:`GtDetector` (our detector interface) and :class:`GtYOLO` (in place of ``YOLO`` inside
  Ultralytics' ``auto_annotate``) return the ground-truth boxes of the images they recognise;
* ``--masks gt``: :class:`GtMasks` replaces SAM's low-res logits by smoothed ground-truth masks after the decoder
  ran (:func:`realistic_logits`), in our segmenter (:func:`apply_gt_masks`) and in Ultralytics' predictor.

Example:
    >>> parse_hw("480x640")
    (480, 640)
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GT_MASKS_NOTE = (
    "masks: after SAM's decoder ran, its low-res logits are replaced by smoothed ground-truth masks in BOTH "
    "pipelines (realistic outlines for upsampling, polygons and writing; the model compute is unchanged)"
)
GT_BOXES_NOTE = (
    "boxes: ground-truth boxes of the synthetic shapes are the detector output of BOTH pipelines "
    "(stub detector in the bench; no YOLO inference is timed)"
)


# -- inputs -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of one synthetic image: ``(N, 4)`` float32 boxes, ``(N,)`` class ids, ``(N, H, W)`` masks."""

    xyxy_px: np.ndarray
    class_ids: np.ndarray
    masks: np.ndarray


@dataclass
class BenchImages:
    """The benchmark's input folder (flat: Ultralytics does not recurse) and, for synthetic images, the truth."""

    folder: Path
    files: list[Path]
    image_hw: tuple[int, int] | None  # None for a user folder (sizes may vary)
    synthetic: bool
    gt: dict[str, GroundTruth] = field(default_factory=dict)  # file name -> truth (synthetic only)


def parse_hw(text: str) -> tuple[int, int]:
    """``"480x640"`` (height x width) -> ``(480, 640)``.

    Example:
        >>> parse_hw("720x1280")
        (720, 1280)
    """
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 480x640, got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"image size must be at least 16x16, got {text!r}")
    return h, w


def make_synthetic_images(
    folder: Path, n: int, image_hw: tuple[int, int], n_objects: int, seed: int = 0, ext: str = ".jpg"
) -> BenchImages:
    """Write ``n`` synthetic shapes images to ``folder`` (flat) and keep their ground truth."""
    import cv2

    from annotator.synthetic import make_shapes_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files, gt = [], {}
    for i in range(n):
        image, objects = make_shapes_image(rng, image_hw, n_objects=n_objects)
        path = folder / f"{i:04d}{ext}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else []
        if not cv2.imwrite(str(path), image, params):
            raise RuntimeError(f"OpenCV could not write {path}")
        files.append(path)
        h, w = image_hw
        gt[path.name] = GroundTruth(
            xyxy_px=np.array([o.box_xyxy_px for o in objects], np.float32).reshape(-1, 4),
            class_ids=np.array([o.class_id for o in objects], np.int64),
            masks=np.stack([o.mask for o in objects]) if objects else np.zeros((0, h, w), bool),
        )
    return BenchImages(folder, files, image_hw, True, gt)


def folder_images(folder: Path) -> BenchImages:
    """The images directly in ``folder`` (not recursive, as Ultralytics reads it)."""
    from annotator.sources import is_image_path

    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))
    if not files:
        raise ValueError(f"{folder} holds no image files (sub-folders are not searched by the bench)")
    return BenchImages(folder, files, None, False)


def image_key(image_bgr: np.ndarray) -> tuple:
    """Cheap identity of a decoded image (shape + a strided sample of its pixels)."""
    return (image_bgr.shape, image_bgr[::13, ::11].tobytes())


# -- realistic masks for --masks gt ---------------------------------------------------------------------------
def realistic_logits(masks: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """``(N, 256, 256)`` float32 logits as SAM's decoder outputs them, positive exactly around each ``(H, W)`` mask.

    The mask is shrunk into the letterboxed (top-left) 256x256 low-res frame and smoothed, so the logits cross 0
    along a smooth outline, as a trained SAM's do.

    Example:
        >>> m = np.zeros((1, 100, 200), bool); m[0, 20:60, 50:150] = True
        >>> lg = realistic_logits(m, (100, 200))
        >>> lg.shape, bool(lg[0, 50, 128] > 0), bool(lg[0, 100, 100] < 0)  # mask centre, background
        ((1, 256, 256), True, True)
    """
    import cv2

    h, w = image_hw
    r = 1024 / max(h, w)
    nh, nw = max(round(h * r / 4), 1), max(round(w * r / 4), 1)
    out = np.full((len(masks), 256, 256), -8.0, np.float32)
    for k, m in enumerate(masks):
        small = cv2.resize(m.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
        out[k, :nh, :nw] = (cv2.GaussianBlur(small, (0, 0), 1.0) - 0.5) * 16.0
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)



class GtMasks:
    """Replaces SAM's mask logits of each box by the smoothed ground-truth mask of the object it best overlaps."""

    def __init__(self, by_key: dict[tuple, GroundTruth]) -> None:
        self._gt = by_key
        self._logits: dict[tuple, np.ndarray] = {}

    def replace(self, key: tuple | None, boxes_xyxy_px: np.ndarray, logits):
        """``logits``: ``(N, 256, 256)`` numpy array or tensor for the ``N`` boxes (original-image pixels); returns
        a new one of the same kind (unknown images: ``logits`` as is)."""
        g = self._gt.get(key) if key is not None else None
        if g is None or not len(g.class_ids) or not len(boxes_xyxy_px):
            return logits
        if key not in self._logits:
            self._logits[key] = realistic_logits(g.masks, g.masks.shape[1:])
        iou = box_iou(np.asarray(boxes_xyxy_px, np.float64).reshape(-1, 4), g.xyxy_px.astype(np.float64))
        best = iou.argmax(1)
        out = logits.copy() if isinstance(logits, np.ndarray) else logits.clone()
        for n, k in enumerate(best.tolist()):
            if iou[n, k] >= 0.3:
                gt = self._logits[key][k]
                if isinstance(out, np.ndarray):
                    out[n] = gt
                else:
                    import torch

                    out[n] = torch.from_numpy(gt).to(device=out.device, dtype=out.dtype)
        return out


def input_key(x) -> bytes:
    """Cheap identity of a model input: a strided sample of an ``(h, w, 3)`` uint8 array or CPU tensor."""
    return np.asarray(x)[::13, ::11].tobytes()


def sam_input_key(image_bgr: np.ndarray) -> bytes:
    """:func:`input_key` of the SAM input our segmenter computes from ``image_bgr`` (its letterbox)."""
    from annotator.segment import letterbox_rgb

    return input_key(letterbox_rgb(image_bgr))


def apply_gt_masks(segmenter, gt_masks: GtMasks) -> None:
    """Make ``segmenter`` (an :class:`annotator.segment.Segmenter`) hand out :class:`GtMasks` logits.

    ``gt_masks`` is keyed by :func:`sam_input_key`: ``infer`` recognises each image by its letterboxed input and
    replaces the low-res logits of its output after the decoder ran (the model compute and SAM's scores are
    unchanged). An instance attribute: this segmenter only, whichever entry point the engine uses.
    """
    from annotator.segment import SamOutput

    infer = segmenter.infer

    def gt_infer(prepared, image_hws, detections):
        outs = infer(prepared, image_hws, detections)
        return [
            SamOutput(gt_masks.replace(input_key(prepared[i]), d.xyxy_px, o.logits_lowres), o.scores) if len(o) else o
            for i, (o, d) in enumerate(zip(outs, detections))
        ]

    segmenter.infer = gt_infer


# -- stub detectors for --boxes gt --------------------------------------------------------------------------
class GtDetector:
    """Our :class:`~annotator.detect.Detector` interface, returning the ground-truth boxes of known images.

    Args:
        images: ``(image_bgr, truth)`` of each image, as our decoder hands them to the detector.
        names: class names.
        detector: the real detector, for its letterbox (``input_spec``): the stub's ``infer`` recognises the
            letterboxed inputs it made. Its other attributes are the real detector's.
    """

    def __init__(self, images: Sequence[tuple[np.ndarray, GroundTruth]], names: dict[int, str], detector=None):
        self._images = list(images)
        self._by_image = {image_key(im): g for im, g in self._images}
        self._by_input: dict[bytes, GroundTruth] | None = None
        self._detector = detector
        self.names = dict(names)

    def bind(self, detector) -> GtDetector:
        """Use ``detector``'s letterbox and attributes (the real detector the stub stands in for)."""
        self._detector, self._by_input = detector, None
        return self

    def __getattr__(self, name: str):
        if name.startswith("_") or self._detector is None:
            raise AttributeError(name)
        return getattr(self._detector, name)

    @staticmethod
    def _dets(g: GroundTruth | None):
        from annotator.records import Detections

        if g is None:
            raise KeyError("bench stub detector: an image the bench did not generate")
        return Detections(g.xyxy_px.copy(), g.class_ids.copy(), np.ones(len(g.class_ids), np.float32))

    def __call__(self, images_bgr: Sequence[np.ndarray]):
        return [self._dets(self._by_image.get(image_key(im))) for im in images_bgr]

    def prepare(self, image_bgr: np.ndarray) -> np.ndarray:
        return self.input_spec(image_bgr)

    def infer(self, prepared, image_hws: Sequence[tuple[int, int]]):
        if self._by_input is None:
            self._by_input = {input_key(self.input_spec(im)): g for im, g in self._images}
        return [self._dets(self._by_input.get(input_key(x))) for x in prepared[: len(image_hws)]]


class _GtPredictor:
    txt_path = Path("none")


class GtYOLO:
    """Stands in for ``YOLO(det_model)`` inside Ultralytics' ``auto_annotate``: yields one ``Results`` per image
    of the folder, read as its loader does (``ultralytics.utils.patches.imread``), with the ground-truth boxes."""

    def __init__(self, gt: dict[str, GroundTruth], names: dict[int, str]) -> None:
        self._gt = gt
        self.names = dict(names)
        self.predictor = _GtPredictor()

    def __call__(self, source, stream: bool = True, **_kwargs) -> Iterator:
        import torch
        from ultralytics.engine.results import Results
        from ultralytics.utils.patches import imread

        folder = Path(source)
        for path in sorted(folder.iterdir()):
            g = self._gt.get(path.name)
            if g is None:
                continue
            image = imread(str(path))
            n = len(g.class_ids)
            data = torch.zeros((n, 6), dtype=torch.float32)
            if n:
                data[:, :4] = torch.from_numpy(g.xyxy_px)
                data[:, 4] = 1.0
                data[:, 5] = torch.from_numpy(g.class_ids.astype(np.float32))
            self.predictor.txt_path = Path(path.stem)
            yield Results(image, path=str(path), names=self.names, boxes=data)
