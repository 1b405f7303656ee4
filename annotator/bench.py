"""``annotator bench``: our pipeline against Ultralytics' ``auto_annotate`` on the same images and models.

Both pipelines run in this process on the same images, weights and settings. Models are loaded once and
warmed up first; the timed repetitions then alternate (Ultralytics first on even repetitions, ours first on
odd ones) so that load from other processes hits both alike. Reported per pipeline: images/s (median and
range over repetitions), the ratio ours/theirs, our per-stage seconds (decode, detect, segment, polygonize,
write), a coarse split of Ultralytics' time, peak RSS, and peak CUDA memory on a GPU.

* Ultralytics' side is its real ``ultralytics.data.annotator.auto_annotate`` function. Inside this process
  only, while it runs, the names ``YOLO`` and ``SAM`` of that module are patched to hand back the models the
  bench already built (so model loading is not timed, as on our side).
* ``--boxes gt`` (synthetic images only) feeds the ground-truth boxes of the synthetic shapes to *both*
  pipelines as the detector output (a stub detector inside the bench). Use it with a random-weight
  detector, which finds nothing, so that SAM runs at all. The output says so.
* The polygon stage is also timed on the ground-truth masks of the synthetic shapes (realistic outlines),
  since random-weight SAM masks have unrealistically long, noisy contours.

Command line (``python -m annotator.bench`` until ``annotator bench`` is wired into the CLI)::

    python -m annotator.bench --det-model yolo11n.pt --sam-model sam2_t.pt --images 8 --image-size 480x640 \\
        --objects 5 --repeats 3 --device cpu [--boxes gt] [--batch-size 4] [--json]

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(); add_bench_args(p)
    >>> ns = p.parse_args(["--images", "2", "--image-size", "96x128", "--boxes", "gt"])
    >>> ns.images, ns.image_size, ns.boxes
    (2, (96, 128), 'gt')
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("decode", "detect", "segment", "polygonize", "write")
POLYGON_NOTE = (
    "polygon stage timed on the ground-truth masks of the synthetic shapes (realistic outlines), "
    "not on this run's SAM masks"
)
GT_MASKS_NOTE = (
    "masks: after SAM's decoder ran, its low-res logits are replaced by smoothed ground-truth masks in BOTH "
    "pipelines (realistic outlines for upsampling, polygons and writing; the model compute is unchanged)"
)
GT_BOXES_NOTE = (
    "boxes: ground-truth boxes of the synthetic shapes are the detector output of BOTH pipelines "
    "(stub detector in the bench; no YOLO inference is timed)"
)

EXIT_OK, EXIT_UNUSABLE = 0, 2


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


def _image_key(image_bgr: np.ndarray) -> tuple:
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


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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
        self._logits: dict[tuple, Any] = {}

    def add_key(self, key: tuple, gt: GroundTruth) -> None:
        self._gt[key] = gt

    def replace(self, key: tuple, boxes_xyxy_px: np.ndarray, logits):
        """``logits``: ``(N, 256, 256)`` tensor for the ``N`` boxes; returns a new tensor (unknown images: as is)."""
        import torch

        g = self._gt.get(key)
        if g is None or not len(g.class_ids) or not len(boxes_xyxy_px):
            return logits
        if key not in self._logits:
            self._logits[key] = torch.from_numpy(realistic_logits(g.masks, g.masks.shape[1:]))
        iou = _box_iou(np.asarray(boxes_xyxy_px, np.float64).reshape(-1, 4), g.xyxy_px.astype(np.float64))
        best = iou.argmax(1)
        out = logits.clone()
        for n, k in enumerate(best.tolist()):
            if iou[n, k] >= 0.3:
                out[n] = self._logits[key][k].to(device=out.device, dtype=out.dtype)
        return out


class _GtMasksSegmenter:
    """Our segmenter with :class:`GtMasks` applied after its decoder (its own model compute is unchanged)."""

    def __init__(self, segmenter, gt_masks: GtMasks) -> None:
        self._seg = segmenter
        self._gt_masks = gt_masks
        self._keys: dict[bytes, tuple] = {}
        decode = segmenter._decode

        def _decode(feats, j, boxes_xyxy_px, image_hw):
            logits, scores = decode(feats, j, boxes_xyxy_px, image_hw)
            key = self._keys.get(np.asarray(boxes_xyxy_px).tobytes())
            return (gt_masks.replace(key, boxes_xyxy_px, logits) if key else logits), scores

        segmenter._decode = _decode  # instance attribute: this bench's segmenter only

    def __getattr__(self, name: str) -> Any:
        return getattr(self._seg, name)

    def __call__(self, images_bgr, detections):
        for im, d in zip(images_bgr, detections):
            self._keys[np.asarray(d.xyxy_px).tobytes()] = _image_key(im)
        return self._seg(images_bgr, detections)


# -- stub detectors for --boxes gt --------------------------------------------------------------------------
class GtDetector:
    """Our :class:`~annotator.detect.Detector` interface, returning the ground-truth boxes of known images."""

    def __init__(self, keyed: dict[tuple, GroundTruth], names: dict[int, str]) -> None:
        self._keyed = keyed
        self.names = dict(names)

    def __call__(self, images_bgr: Sequence[np.ndarray]):
        from annotator.records import Detections

        out = []
        for im in images_bgr:
            g = self._keyed.get(_image_key(im))
            if g is None:
                raise KeyError("bench stub detector: an image the bench did not generate")
            out.append(Detections(g.xyxy_px.copy(), g.class_ids.copy(), np.ones(len(g.class_ids), np.float32)))
        return out


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


# -- timing helpers ----------------------------------------------------------------------------------------
class _StageClock:
    """Accumulates seconds of the wrapped calls (proxy: every other attribute goes to the wrapped object)."""

    def __init__(self, target: Any, sync: Callable[[], None]) -> None:
        self._target = target
        self._sync = sync
        self.seconds = 0.0
        self.boxes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _TimedCall(_StageClock):
    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._target(*args, **kwargs)
        finally:
            self._sync()
            self.seconds += time.perf_counter() - t0


class _TimedStream(_StageClock):
    """For ``det_model(data, stream=True)``: times each step of the generator (decode + detect)."""

    def __call__(self, *args, **kwargs):
        it = iter(self._target(*args, **kwargs))
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.seconds += time.perf_counter() - t0
                return
            self._sync()
            self.seconds += time.perf_counter() - t0
            self.boxes += len(item.boxes) if item.boxes is not None else 0
            yield item


class _CountingDetector(_StageClock):
    """Counts the boxes our detector (or the gt stub) hands to the segmenter."""

    def __call__(self, images):
        dets = self._target(images)
        self.boxes += sum(len(d) for d in dets)
        return dets


class PeakRSS:
    """Context manager sampling this process's resident memory every ``interval_s``; ``peak_mib`` after exit."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def current_mib() -> float:
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError, AttributeError):
            import resource  # not Linux: the process's lifetime peak is the best we can do

            scale = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, self.current_mib())

    def __enter__(self) -> PeakRSS:
        self.peak_mib = self.current_mib()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mib = max(self.peak_mib, self.current_mib())


class Device:
    """Where the models run, for synchronising timers and reading CUDA memory."""

    def __init__(self, device: str) -> None:
        import torch

        d = str(device).strip().lower()
        self.cuda = torch.cuda.is_available() and d not in ("cpu", "mps")
        self.name = "cuda" if self.cuda else (d or "cpu")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return torch.cuda.max_memory_allocated() / 2**20


# -- the two pipelines -----------------------------------------------------------------------------------------
@dataclass
class RunTiming:
    seconds: float
    images: int
    boxes: int
    instances: int
    stage_seconds: dict[str, float]
    peak_rss_mib: float
    peak_cuda_mib: float | None
    load_1min: float | None = None  # the OS load average after the run (other processes compete for the CPU)
    cpu_s: float | None = None  # CPU seconds this process used during the run (all its threads)


class UltralyticsPipeline:
    """Ultralytics' own ``auto_annotate`` with models built once (patched in for the duration of a run)."""

    name = "ultralytics"

    def __init__(
        self,
        det_path: Path,
        sam_path: Path,
        settings: dict,
        device: Device,
        gt_yolo: GtYOLO | None,
        threads: int = 0,
        gt_masks: GtMasks | None = None,
    ) -> None:
        from ultralytics import SAM, YOLO
        from ultralytics.utils import NUM_THREADS

        self.settings = settings  # device, conf, iou, imgsz, max_det, classes
        self.device = device
        self.gt_masks = gt_masks
        # A fresh auto_annotate call sets up new predictors, whose select_device sets torch's CPU threads to
        # Ultralytics' NUM_THREADS (cpu_count - 1): run it with that, as it runs on its own, unless told otherwise.
        self.threads = threads or (NUM_THREADS if not device.cuda else 0)
        self.det = gt_yolo if gt_yolo is not None else YOLO(str(det_path))
        self.sam = SAM(str(sam_path))

    @contextlib.contextmanager
    def _patched(self, det, sam):
        import ultralytics.data.annotator as ul
        from ultralytics.models.sam import predict as sam_predict

        saved = ul.YOLO, ul.SAM
        ul.YOLO, ul.SAM = (lambda *a, **k: det), (lambda *a, **k: sam)
        classes = (sam_predict.Predictor, sam_predict.SAM2Predictor)
        saved_inf = [c.__dict__["_inference_features"] for c in classes]
        if self.gt_masks is not None:
            gt_masks = self.gt_masks
            for cls, orig in zip(classes, saved_inf):

                def _inference_features(pred, features, *args, _orig=orig, **kwargs):
                    masks, scores = _orig(pred, features, *args, **kwargs)
                    im0 = pred.batch[1][0]
                    if isinstance(im0, np.ndarray) and args and args[0] is not None:
                        h, w = im0.shape[:2]
                        r = min(1024 / h, 1024 / w)  # the SAM letterbox gain: prompts are in the 1024 frame
                        boxes = args[0].reshape(-1, 4).float().cpu().numpy() / r
                        masks = gt_masks.replace(_image_key(im0), boxes, masks)
                    return masks, scores

                cls._inference_features = _inference_features
        try:
            yield ul.auto_annotate
        finally:
            ul.YOLO, ul.SAM = saved
            for cls, orig in zip(classes, saved_inf):
                cls._inference_features = orig

    def run(self, folder: Path, out: Path) -> RunTiming:
        import torch

        det, sam = _TimedStream(self.det, self.device.sync), _TimedCall(self.sam, self.device.sync)
        self.device.reset_peak()
        saved_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with self._patched(det, sam) as auto_annotate, PeakRSS() as rss:
                self.device.sync()
                t0 = time.perf_counter()
                auto_annotate(data=folder, det_model="bench", sam_model="bench", output_dir=out, **self.settings)
                self.device.sync()
                seconds = time.perf_counter() - t0
        finally:
            torch.set_num_threads(saved_threads)
        n_images = sum(1 for p in folder.iterdir() if p.is_file())
        stages = {
            "detect+decode": det.seconds,
            "segment": sam.seconds,
            "polygonize+write": max(seconds - det.seconds - sam.seconds, 0.0),
        }
        return RunTiming(seconds, n_images, det.boxes, _count_rows(out), stages, rss.peak_mib, self.device.peak_mib())


class OursPipeline:
    """:func:`annotator.api.run` (local engine) with stages built once and reused by every run."""

    name = "annotator"

    def __init__(
        self,
        cfg_kwargs: dict,
        gt_detector: GtDetector | None,
        threads: int = 0,
        cpu_workers: int = 0,
        gt_masks: GtMasks | None = None,
    ) -> None:
        from annotator.config import make_config
        from annotator.models import resolve_models
        from annotator.stages import Stages

        self.cfg_kwargs = cfg_kwargs
        cfg = make_config(**cfg_kwargs)
        self.models = resolve_models(cfg.det_model, cfg.sam_model, weights_dir=cfg.weights_dir)
        stages = Stages.build(cfg, self.models)
        self.detector = _CountingDetector(gt_detector if gt_detector is not None else stages.detector, lambda: None)
        segmenter = stages.segmenter if gt_masks is None else _GtMasksSegmenter(stages.segmenter, gt_masks)
        self.stages = dataclasses.replace(stages, detector=self.detector, segmenter=segmenter)
        self.device = Device(cfg.device)
        import torch

        for stage in (stages.segmenter, stages.detector):
            pinned = getattr(stage, "threads", None)  # TorchThreads (absent in older stages)
            if threads and pinned is not None:
                pinned.n = threads
        pinned = getattr(stages.segmenter, "threads", None)
        self.threads = pinned.n if pinned is not None else torch.get_num_threads()
        if cpu_workers and hasattr(stages.segmenter, "cpu_workers"):
            stages.segmenter.cpu_workers = cpu_workers
        self.cpu_workers = getattr(stages.segmenter, "cpu_workers", 1)

    def compile_encoder(self) -> None:
        self.stages.segmenter.compile_encoder()  # (through _GtMasksSegmenter's __getattr__ too)

    def run(self, folder: Path, out: Path) -> RunTiming:
        from annotator.api import run
        from annotator.config import make_config

        cfg = make_config(**{**self.cfg_kwargs, "data": folder, "output_dir": out})
        self.detector.boxes = 0
        self.device.reset_peak()
        with PeakRSS() as rss:
            self.device.sync()
            t0 = time.perf_counter()
            summary = run(cfg, engine_options={"stages": self.stages})
            self.device.sync()
            seconds = time.perf_counter() - t0
        stages = {k: float(summary.seconds_per_stage.get(k, 0.0)) for k in STAGES}
        if summary.failed:
            raise RuntimeError(f"our pipeline failed on {summary.failed} images: {summary.failures[:2]}")
        return RunTiming(
            seconds,
            summary.images_seen,
            self.detector.boxes,
            summary.instances,
            stages,
            rss.peak_mib,
            self.device.peak_mib(),
        )


def _load_1min() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _count_rows(out: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in out.rglob("*.txt")) if out.exists() else 0


# -- polygon stage on realistic masks ------------------------------------------------------------------------
def polygon_stage_on_gt(images: BenchImages, polygonizer, repeats: int) -> dict[str, Any]:
    """Seconds per image of our polygonizer and of Ultralytics' ``masks.xyn`` on the ground-truth masks."""
    import torch
    from ultralytics.engine.results import Masks

    from annotator.records import Instance, MaskCrop

    inputs = []
    for g in images.gt.values():
        insts = [
            Instance(int(c), 1.0, b.copy(), 1.0, MaskCrop.from_full(m), k)
            for k, (c, b, m) in enumerate(zip(g.class_ids, g.xyxy_px, g.masks))
        ]
        inputs.append((insts, torch.from_numpy(g.masks.copy()), g.masks.shape[1:]))
    n_img = max(len(inputs), 1)
    for insts, full, hw in inputs[:1]:  # warm-up: lazy imports, first-call costs
        polygonizer(insts)
        if len(full):
            _ = Masks(full, tuple(hw)).xyn
    ours_s, theirs_s = [], []
    ours_vertices = theirs_vertices = n_poly_ours = n_poly_theirs = 0
    for r in range(max(repeats, 1)):
        order = ("theirs", "ours") if r % 2 == 0 else ("ours", "theirs")
        for who in order:
            t0 = time.perf_counter()
            for insts, full, hw in inputs:
                if who == "ours":
                    res = polygonizer(insts)
                    if r == 0:
                        n_poly_ours += sum(len(p.polygons_xy_px) for p in res)
                        ours_vertices += sum(len(xy) for p in res for xy in p.polygons_xy_px)
                elif len(full):
                    segs = Masks(full, tuple(hw)).xyn
                    if r == 0:
                        n_poly_theirs += len(segs)
                        theirs_vertices += sum(len(s) for s in segs)
            (ours_s if who == "ours" else theirs_s).append((time.perf_counter() - t0) / n_img)
    return {
        "note": POLYGON_NOTE,
        "annotator_s_per_image": statistics.median(ours_s),
        "ultralytics_s_per_image": statistics.median(theirs_s),
        "annotator_vertices_per_polygon": ours_vertices / max(n_poly_ours, 1),
        "ultralytics_vertices_per_polygon": theirs_vertices / max(n_poly_theirs, 1),
    }


# -- the bench ------------------------------------------------------------------------------------------------
def _summarise(runs: list[RunTiming]) -> dict[str, Any]:
    ips = [r.images / r.seconds if r.seconds > 0 else 0.0 for r in runs]
    stage_keys = list(runs[0].stage_seconds) if runs else []
    cuda = [r.peak_cuda_mib for r in runs if r.peak_cuda_mib is not None]
    return {
        "images": runs[0].images if runs else 0,
        "boxes": runs[0].boxes if runs else 0,
        "instances": runs[0].instances if runs else 0,
        "images_per_s": statistics.median(ips) if ips else 0.0,
        "images_per_s_min": min(ips, default=0.0),
        "images_per_s_max": max(ips, default=0.0),
        "images_per_s_runs": ips,
        "seconds_runs": [r.seconds for r in runs],
        "load_1min_runs": [r.load_1min for r in runs],
        "cpu_s_per_image": statistics.median(r.cpu_s / max(r.images, 1) for r in runs) if runs else 0.0,
        "stage_seconds": {k: statistics.median(r.stage_seconds[k] for r in runs) for k in stage_keys},
        "peak_rss_mib": max((r.peak_rss_mib for r in runs), default=0.0),
        "peak_cuda_mib": max(cuda) if cuda else None,
    }


def run_bench(ns: argparse.Namespace, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the benchmark described by the parsed arguments; return the report as a dict (see :func:`format_report`)."""
    import torch

    from annotator.models import resolve_models
    from annotator.synthetic import SHAPE_NAMES

    if ns.interop_threads:
        torch.set_num_interop_threads(ns.interop_threads)  # before any parallel work: process-wide
    work = Path(tempfile.mkdtemp(prefix="annotator-bench-"))
    try:
        if ns.data is not None:
            images = folder_images(Path(ns.data))
            if ns.boxes == "gt":
                raise ValueError("--boxes gt needs the bench's synthetic images (leave out DATA)")
        else:
            images = make_synthetic_images(work / "images", ns.images, ns.image_size, ns.objects, seed=ns.seed)
        models = resolve_models(ns.det_model, ns.sam_model, weights_dir=ns.weights_dir)
        device = Device(ns.device)
        settings = dict(device=ns.device, conf=ns.conf, iou=0.45, imgsz=ns.imgsz, max_det=300, classes=None)
        if not images.synthetic and ns.masks == "gt":
            raise ValueError("--masks gt needs the bench's synthetic images (leave out DATA)")
        gt_keyed: dict[tuple, GroundTruth] = {}  # our decoder's image -> truth
        gt_keyed_ul: dict[tuple, GroundTruth] = {}  # Ultralytics' imread image -> truth
        if ns.boxes == "gt" or ns.masks == "gt":
            from ultralytics.utils.patches import imread

            from annotator.records import SourceItem
            from annotator.sources import decode_image_bytes

            for p in images.files:
                dec = decode_image_bytes(p.read_bytes(), SourceItem(p, p.name))
                gt_keyed[_image_key(dec.image_bgr)] = images.gt[p.name]
                gt_keyed_ul[_image_key(imread(str(p)))] = images.gt[p.name]
        log(f"building models: det={models.det_path.name} sam={models.sam_path.name} device={device.name}")
        cfg_kwargs = dict(
            data=images.folder,
            det_model=str(models.det_path),
            sam_model=str(models.sam_path),
            output_dir=work / "out_ours",
            batch_size=ns.batch_size,
            format="yolo",
            compat=ns.compat,
            half=not ns.fp32,
            progress=False,
            **settings,
        )
        pipes: dict[str, Any] = {}
        if ns.which in ("both", "ultralytics"):
            pipes["ultralytics"] = UltralyticsPipeline(
                models.det_path,
                models.sam_path,
                settings,
                device,
                GtYOLO(images.gt, SHAPE_NAMES) if ns.boxes == "gt" else None,
                threads=ns.ultralytics_threads,
                gt_masks=GtMasks(gt_keyed_ul) if ns.masks == "gt" else None,
            )
        if ns.which in ("both", "annotator"):
            ours = OursPipeline(
                cfg_kwargs,
                GtDetector(gt_keyed, SHAPE_NAMES) if ns.boxes == "gt" else None,
                ns.threads,
                ns.cpu_workers,
                gt_masks=GtMasks(gt_keyed) if ns.masks == "gt" else None,
            )
            if ns.compile:
                ours.compile_encoder()
            pipes["annotator"] = ours

        # warm-up: the first batch of images (and the remainder batch size, for compiled shapes)
        warm_s: dict[str, float] = {}
        if ns.warmup > 0:
            sizes = sorted({min(len(images.files), ns.batch_size), len(images.files) % ns.batch_size} - {0})
            for k in sizes:
                warm_dir = work / f"warm{k}"
                warm_dir.mkdir()
                for p in images.files[:k]:
                    shutil.copyfile(p, warm_dir / p.name)
                for name, pipe in pipes.items():
                    for w in range(ns.warmup if k == sizes[0] else 1):
                        t0 = time.perf_counter()
                        pipe.run(warm_dir, work / f"warm_out_{name}")
                        warm_s[name] = warm_s.get(name, 0.0) + time.perf_counter() - t0
                        shutil.rmtree(work / f"warm_out_{name}", ignore_errors=True)
                        log(f"warm-up {name} ({k} images): {time.perf_counter() - t0:.2f} s")

        runs: dict[str, list[RunTiming]] = {name: [] for name in pipes}
        names = list(pipes)
        for r in range(ns.repeats):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                out = work / f"out_{name}_{r}"
                cpu0 = time.process_time()
                t = pipes[name].run(images.folder, out)
                t.cpu_s = time.process_time() - cpu0
                t.load_1min = _load_1min()
                runs[name].append(t)
                log(f"repeat {r + 1}/{ns.repeats} {name}: {t.images} images in {t.seconds:.2f} s (load {t.load_1min})")
                shutil.rmtree(out, ignore_errors=True)

        report: dict[str, Any] = {
            "images": len(images.files),
            "image_hw": list(images.image_hw) if images.image_hw else None,
            "synthetic": images.synthetic,
            "objects_per_image": ns.objects if images.synthetic else None,
            "det_model": str(models.det_path),
            "sam_model": str(models.sam_path),
            "device": device.name,
            "imgsz": ns.imgsz,
            "batch_size": ns.batch_size,
            "repeats": ns.repeats,
            "warmup": ns.warmup,
            "boxes": ns.boxes,
            "boxes_note": GT_BOXES_NOTE if ns.boxes == "gt" else "boxes: the detector's own output",
            "masks": ns.masks,
            "masks_note": GT_MASKS_NOTE if ns.masks == "gt" else "masks: SAM's own output",
            "compat": ns.compat,
            "compile": bool(ns.compile),
            "half": bool(device.cuda and not ns.fp32),
            "torch": torch.__version__,
            "torch_threads": {name: pipe.threads for name, pipe in pipes.items()},
            "torch_interop_threads": torch.get_num_interop_threads(),
            "annotator_cpu_workers": pipes["annotator"].cpu_workers if "annotator" in pipes else None,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "warmup_s": warm_s,
            "pipelines": {name: _summarise(rs) for name, rs in runs.items()},
        }
        p = report["pipelines"]
        if "annotator" in p and "ultralytics" in p and p["ultralytics"]["images_per_s"] > 0:
            report["ratio"] = p["annotator"]["images_per_s"] / p["ultralytics"]["images_per_s"]
            report["ratio_runs"] = [
                a / b if b > 0 else 0.0
                for a, b in zip(p["annotator"]["images_per_s_runs"], p["ultralytics"]["images_per_s_runs"])
            ]
        else:
            report["ratio"], report["ratio_runs"] = None, []
        notes = []
        for name, s in p.items():
            if s["boxes"] == 0:
                notes.append(f"{name}: the detector found no box, so SAM never ran (try --boxes gt)")
            elif s["instances"] == 0:
                notes.append(
                    f"{name}: SAM ran on {s['boxes']} boxes but kept no mask (scores <= 0.25: random weights?)"
                )
        if images.synthetic and "annotator" in pipes:
            report["polygon_stage_gt"] = polygon_stage_on_gt(images, pipes["annotator"].stages.polygonizer, ns.repeats)
        else:
            report["polygon_stage_gt"] = None
        if not images.synthetic:
            notes.append("polygon stage on ground-truth masks skipped: a user folder has no ground truth")
        report["notes"] = notes
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def format_report(rep: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run_bench` report."""
    hw = "x".join(map(str, rep["image_hw"])) if rep["image_hw"] else "various sizes"
    src = f"synthetic, {rep['objects_per_image']} objects each" if rep["synthetic"] else "folder"
    lines = [
        f"annotator bench: {rep['images']} images {hw} ({src}); det={Path(rep['det_model']).name} "
        f"sam={Path(rep['sam_model']).name} device={rep['device']} imgsz={rep['imgsz']} batch={rep['batch_size']} "
        f"repeats={rep['repeats']} torch={rep['torch']} "
        f"threads={','.join(f'{k}:{v}' for k, v in rep['torch_threads'].items())}"
        + (f" encoder-workers(ours)={workers}" if (workers := rep.get("annotator_cpu_workers") or 1) > 1 else "")
        + (" compile=encoder(ours)" if rep["compile"] else "")
        + (" half(ours)" if rep.get("half") else ""),
        rep["boxes_note"],
        rep.get("masks_note", "masks: SAM's own output"),
        f"{'pipeline':<12} {'images/s':>9} {'min..max':>15} {'CPU s/image':>11} {'boxes':>6} {'instances':>9} "
        f"{'peak RSS MiB':>12}"
        + (f" {'peak CUDA MiB':>13}" if rep["device"] == "cuda" else ""),
    ]
    for name, s in rep["pipelines"].items():
        rng = f"{s['images_per_s_min']:.3f}..{s['images_per_s_max']:.3f}"
        row = (
            f"{name:<12} {s['images_per_s']:>9.3f} {rng:>15} {s.get('cpu_s_per_image', float('nan')):>11.2f} "
            f"{s['boxes']:>6} "
            f"{s['instances']:>9} {s['peak_rss_mib']:>12.0f}"
        )
        if rep["device"] == "cuda":
            row += f" {s['peak_cuda_mib'] or 0:>13.0f}"
        lines.append(row)
    if rep.get("ratio") is not None:
        rr = rep["ratio_runs"]
        lines.append(
            f"ratio annotator/ultralytics (images/s, medians): {rep['ratio']:.2f}x"
            f"  (per repeat {min(rr):.2f}..{max(rr):.2f})"
        )
    for name, s in rep["pipelines"].items():
        st = "  ".join(f"{k} {v:.3f}" for k, v in s["stage_seconds"].items())
        what = (
            "per-stage s (sum over images; decode/polygonize/write overlap the models)"
            if name == "annotator"
            else "split s"
        )
        lines.append(f"{name} {what}: {st}")
    pg = rep.get("polygon_stage_gt")
    if pg:
        lines.append(pg["note"] + ":")
        lines.append(
            f"  annotator {pg['annotator_s_per_image'] * 1e3:.2f} ms/image ({pg['annotator_vertices_per_polygon']:.0f} "
            f"vertices/polygon), ultralytics masks.xyn {pg['ultralytics_s_per_image'] * 1e3:.2f} ms/image "
            f"({pg['ultralytics_vertices_per_polygon']:.0f} vertices/polygon)"
        )
    lines.append("peak RSS is process-wide: both pipelines' models are loaded in this process")
    loads = [x for s in rep["pipelines"].values() for x in s.get("load_1min_runs", []) if x is not None]
    if loads:
        lines.append(
            f"load average during the repeats: {min(loads):.1f}..{max(loads):.1f} on {rep['cpu_count']} CPUs "
            "(other processes compete: compare the interleaved repeats, not runs taken at other times)"
        )
    lines.extend(f"note: {n}" for n in rep["notes"])
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------------------
def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``annotator bench`` arguments to ``parser``."""
    parser.add_argument(
        "data", nargs="?", default=None, help="flat folder of images (default: generate synthetic ones)"
    )
    g = parser.add_argument_group("synthetic images (when DATA is not given)")
    g.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    g.add_argument("--image-size", dest="image_size", type=parse_hw, default=(480, 640), help="HxW (default 480x640)")
    g.add_argument("--objects", type=int, default=5, help="shapes per image (default 5)")
    g.add_argument("--seed", type=int, default=0)
    m = parser.add_argument_group("models and settings (the same for both pipelines)")
    m.add_argument("--det-model", dest="det_model", default="yolo11n.pt", help="YOLO detector (default yolo11n.pt)")
    m.add_argument("--sam-model", dest="sam_model", default="sam2_t.pt", help="SAM / SAM 2 weights (default sam2_t.pt)")
    m.add_argument("--weights-dir", dest="weights_dir", type=Path, default=None, help="folder with weight files")
    m.add_argument("--device", default="cpu", help="cpu (default), 0, cuda:0 ...")
    m.add_argument("--imgsz", type=int, default=640, help="detector input size (default 640)")
    m.add_argument("--conf", type=float, default=0.25, help="detector confidence (default 0.25)")
    m.add_argument(
        "--boxes",
        choices=["det", "gt"],
        default="det",
        help="det: the detector's boxes (default); gt: the synthetic ground-truth boxes for both pipelines",
    )
    m.add_argument(
        "--masks",
        choices=["sam", "gt"],
        default="sam",
        help="sam: SAM's masks (default); gt: smoothed ground-truth masks replace SAM's logits in both pipelines "
        "after its decoder ran (realistic polygon/write costs with random-weight SAM)",
    )
    o = parser.add_argument_group("our pipeline")
    o.add_argument("--batch-size", dest="batch_size", type=int, default=4, help="images per model batch (default 4)")
    o.add_argument("--compat", choices=["none", "ultralytics"], default="none", help="our polygon mode (default none)")
    o.add_argument(
        "--compile", action="store_true", help="torch.compile our SAM image encoder (compile time in warm-up)"
    )
    o.add_argument(
        "--cpu-workers",
        dest="cpu_workers",
        type=int,
        default=0,
        help="CPU: images our SAM encoder runs in parallel worker threads (default: one per core, at most 4)",
    )
    o.add_argument("--fp32", action="store_true", help="on GPU, run ours in fp32 like Ultralytics (default: bf16/fp16)")
    r = parser.add_argument_group("run")
    r.add_argument("--repeats", type=int, default=3, help="timed repetitions per pipeline, alternating (default 3)")
    r.add_argument("--warmup", type=int, default=1, help="warm-up runs per pipeline before timing (default 1)")
    r.add_argument("--which", choices=["both", "annotator", "ultralytics"], default="both")
    r.add_argument(
        "--threads", type=int, default=0, help="torch threads for our models (default: as Ultralytics, cpu_count-1)"
    )
    r.add_argument(
        "--ultralytics-threads",
        dest="ultralytics_threads",
        type=int,
        default=0,
        help="torch threads for Ultralytics (default: what its select_device sets, min(8, cpu_count-1))",
    )
    r.add_argument("--interop-threads", dest="interop_threads", type=int, default=0, help="torch interop threads")
    r.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    r.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _check(ns: argparse.Namespace) -> None:
    if ns.images < 1 or ns.repeats < 1 or ns.warmup < 0 or ns.batch_size < 1 or ns.objects < 0:
        raise ValueError("--images, --repeats and --batch-size must be >= 1; --warmup and --objects >= 0")
    if ns.imgsz <= 0 or ns.imgsz % 32:
        raise ValueError(f"--imgsz must be a positive multiple of 32, got {ns.imgsz}")


def cmd_bench(ns: argparse.Namespace) -> int:
    """Run ``annotator bench``; print the table (or JSON with ``--json``). Exit 0, or 2 on a bad setup."""
    from annotator.errors import ConfigError, ModelLoadError, WeightsNotFoundError

    log = (lambda s: None) if ns.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        _check(ns)
        rep = run_bench(ns, log)
    except (ConfigError, WeightsNotFoundError, ModelLoadError, ValueError) as e:
        print(f"annotator bench: error: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    if ns.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print(format_report(rep))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="annotator bench", description="Ultralytics auto_annotate vs annotator on the same images and models"
    )
    add_bench_args(parser)
    return cmd_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
