"""The two contenders of the benchmark, each built once and run on a folder: Ultralytics' ``auto_annotate`` and
our :func:`annotator.api.run` (local engine), with their per-stage seconds and peak memory (:class:`RunTiming`).

Example:
    >>> ours = OursPipeline(cfg_kwargs, gt_detector=None)  # doctest: +SKIP
    >>> ours.run(folder, out_dir).images  # doctest: +SKIP
    8
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.ground_truth import GtDetector, GtMasks, GtYOLO, apply_gt_masks, image_key
from benchmarks.timers import CountingDetector, Device, PeakRSS, TimedCall, TimedStream

STAGES = ("decode", "detect", "segment", "polygonize", "write")


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
                        masks = gt_masks.replace(image_key(im0), boxes, masks)
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

        det, sam = TimedStream(self.det, self.device.sync), TimedCall(self.sam, self.device.sync)
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
        return RunTiming(seconds, n_images, det.boxes, count_rows(out), stages, rss.peak_mib, self.device.peak_mib())


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
        detector = gt_detector.bind(stages.detector) if gt_detector is not None else stages.detector
        self.detector = CountingDetector(detector, lambda: None)
        if gt_masks is not None:
            apply_gt_masks(stages.segmenter, gt_masks)
        self.stages = dataclasses.replace(stages, detector=self.detector)
        self.device = Device(cfg.device)
        if threads:  # TorchThreads of both stages
            stages.segmenter.threads.n = stages.detector.threads.n = threads
        self.threads = stages.segmenter.threads.n
        if cpu_workers:
            stages.segmenter.cpu_workers = cpu_workers
        self.cpu_workers = stages.segmenter.cpu_workers

    def compile_encoder(self) -> None:
        self.stages.segmenter.compile_encoder()

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


def count_rows(out: Path) -> int:
    """Label rows written under ``out`` (one per instance)."""
    return sum(len(p.read_text().splitlines()) for p in out.rglob("*.txt")) if out.exists() else 0

