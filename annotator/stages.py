"""The model stages bundled for an engine, split by *where* each step runs.

An engine (``pipelines/local.py`` threads, ``pipelines/ray_images.py`` on Ray) decides *where* and *how
many*; this module decides *what*. Per image and per batch::

    CPU pool:     decode_or_error -> Stages.prepare       (letterbox for the detector and for SAM)
    CPU:          Stages.collate                           (one batch, SAM inputs stacked in pinned memory)
    model thread: Stages.infer                             (detector + SAM encoder/decoder; one copy to host)
                  CUDA code path (annotator.code_path):     detector launched -> SAM encoder queued -> the
                                                           detector's one copy, NMS on the host -> decoder ->
                                                           SAM's one copy: <= 2 host syncs per batch
    CPU pool:     Stages.finish                            (mask upsampling, polygons)

Per-image failures become :class:`~annotator.records.ImageResult` statuses, never exceptions: a batch
that fails as a whole is re-run one image at a time so that only the culprit is ``failed``.

Example:
    >>> stages = Stages.build(cfg, models)  # doctest: +SKIP
    >>> results = stages.process([decode_or_error(item, cfg) for item in items])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from annotator.code_path import cuda_code_path
from annotator.config import AnnotateConfig
from annotator.detect import Detector
from annotator.models import ResolvedModels
from annotator.polygons import Polygonizer
from annotator.records import (Detections, DecodedImage, DropReason, ImageResult, ImageStatus, PolygonInstance,
                               SourceItem, add_dropped)  # fmt: skip
from annotator.segment import MaskFinisher, Segmenter, letterbox_rgb
from annotator.image_decode import ImageDecodeError, decode_image_bytes, max_file_bytes, read_image_bytes


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 500 characters): a per-image reason."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def decode_or_error(item: SourceItem, cfg: AnnotateConfig, data: bytes | None = None) -> DecodedImage | ImageResult:
    """Read and decode one input; a bad file becomes an :class:`ImageResult` with its status and reason."""
    t0 = time.perf_counter()
    try:
        raw = read_image_bytes(item, max_bytes=max_file_bytes(cfg.max_pixels)) if data is None else data
        return decode_image_bytes(raw, item, max_pixels=cfg.max_pixels, min_side_px=cfg.min_side_px)
    except ImageDecodeError as e:
        return ImageResult(item, e.status, reason=e.reason, seconds={"decode": time.perf_counter() - t0})
    except OSError as e:
        return ImageResult(item, ImageStatus.DECODE_ERROR, reason=f"unreadable: {one_line(e)}")
    except Exception as e:  # a decoder bug on one hostile file must not stop the run
        return ImageResult(item, ImageStatus.FAILED, reason=f"decode: {one_line(e)}")


@dataclass
class Stages:
    """Detector, segmenter and polygonizer, each loaded once."""

    detector: Detector
    segmenter: Segmenter
    polygonizer: Polygonizer
    det_batch: int = 1
    pin_memory: bool = False
    cuda_path: bool = False  # the CUDA code path's order and copies (annotator.code_path; on a GPU, or forced)
    _cpu_steps: CpuSteps | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls, cfg: AnnotateConfig, models: ResolvedModels, *, parts: tuple[str, ...] = ("detector", "segmenter")
    ) -> Stages:
        """Load the models named in ``parts`` (``"detector"``, ``"segmenter"``) once; the polygonizer always."""
        compat = cfg.compat == "ultralytics"
        data_root = cfg.data if cfg.data.is_dir() else cfg.data.parent  # where prompt files name images from
        detector = segmenter = None
        if cfg.prompts == "everything":  # settings only: built with either part (Ray split mode: the segmenter's)
            from annotator.everything import EverythingSource

            detector = EverythingSource(cfg.everything)
        elif "detector" in parts and cfg.prompts == "boxes":
            from annotator.prompts import LabelBoxSource

            detector = LabelBoxSource(cfg.prompt_labels, data_root)
        elif "detector" in parts and cfg.prompts == "points":
            from annotator.prompt_points import PointPromptSource

            detector = PointPromptSource(cfg.prompt_points, data_root)
        elif "detector" in parts:
            detector = Detector(
                models.det_path,
                conf=cfg.conf,
                iou=cfg.iou,
                imgsz=cfg.imgsz,
                max_det=cfg.max_det,
                classes=cfg.classes,
                device=cfg.device,
                half=cfg.half,
                trust=cfg.trust_weights,
                with_masks=cfg.detector_masks != "ignore",
            )
        if "segmenter" in parts:
            segmenter = Segmenter(
                models.sam_path,
                models.sam_name,
                models.sam_family,
                device=cfg.device,
                half=cfg.half and not compat,
                min_score=cfg.sam_min_score,
                mask_upsample="full" if compat else "crop",
                trust=cfg.trust_weights,
            )
            segmenter.mask_prompts = cfg.detector_masks == "prompt"
            segmenter.finisher = replace(segmenter.finisher, keep_detector_masks=cfg.detector_masks == "keep_better")
        if cfg.torch_threads is not None:  # else the count Ultralytics' select_device picks (see TorchThreads)
            for stage in (detector, segmenter):
                if stage is not None and hasattr(stage, "threads"):
                    stage.threads.n = cfg.torch_threads
        on_cpu = str(cfg.device).strip().lower() == "cpu" or not _cuda_available()
        cuda_path = cuda_code_path(cfg.device)  # on a CPU too with ANNOTATOR_CUDA_CODE_PATH=1 (no pinned memory)
        if segmenter is not None and cuda_path:
            segmenter.encoder_batch = cfg.batch_size  # fixed encoder shapes: compiled graphs apply
        if segmenter is not None and cfg.compile:
            segmenter.compile_encoder()
        return cls(
            detector,  # type: ignore[arg-type]
            segmenter,  # type: ignore[arg-type]
            cls.build_polygonizer(cfg),
            det_batch=cfg.batch_size if cuda_path else 1,
            pin_memory=not on_cpu and str(cfg.device).strip().lower() != "mps",
            cuda_path=cuda_path,
        )

    @staticmethod
    def build_finisher(cfg: AnnotateConfig) -> MaskFinisher:
        """SAM output -> instances for ``cfg`` (no model: cheap to build in every CPU worker)."""
        return MaskFinisher(cfg.sam_min_score, "full" if cfg.compat == "ultralytics" else "crop", 0.0,
                            keep_detector_masks=cfg.detector_masks == "keep_better")  # fmt: skip

    @staticmethod
    def build_polygonizer(cfg: AnnotateConfig) -> Polygonizer:
        """The polygon stage for ``cfg`` (no model: cheap to build in every CPU worker)."""
        return Polygonizer(
            tolerance_px=cfg.simplify_tolerance_px,
            min_area_px=cfg.min_area_px,
            multipart="largest" if cfg.multipart == "largest" else "all",
            with_rle=cfg.writes_coco and cfg.coco_segmentation == "rle",
            compat="ultralytics" if cfg.compat == "ultralytics" else "none",
        )

    @property
    def names(self) -> dict[int, str]:
        return self.detector.names

    # -- the steps, by where they run ------------------------------------------------------------------------
    def prepare(self, x: DecodedImage | ImageResult) -> PreparedImage | ImageResult:
        """[CPU pool] Letterbox one decoded image for the detector and for SAM (failed inputs pass through)."""
        return self.cpu_steps.prepare(x)

    @property
    def cpu_steps(self) -> CpuSteps:
        """The model-free steps of these stages (prepare, finish), picklable for CPU workers."""
        if self._cpu_steps is None:
            self._cpu_steps = CpuSteps(
                self.detector.input_spec if self.detector is not None else None,
                self.polygonizer,
                self.segmenter.finisher if self.segmenter is not None else None,
            )
        return self._cpu_steps

    def collate(self, inputs: Sequence[PreparedImage | ImageResult]) -> PreparedBatch:
        """[CPU] One model batch: the SAM inputs stacked once, in pinned memory on CUDA (non-blocking upload)."""
        prepared = [x for x in inputs if isinstance(x, PreparedImage)]
        sam = None
        if prepared and prepared[0].sam_input is not None:
            sam = np.stack([p.sam_input for p in prepared])
            if self.pin_memory:
                import torch

                sam = torch.from_numpy(sam).pin_memory()
        return PreparedBatch(list(inputs), sam)

    def infer(self, batch: PreparedBatch | Sequence[PreparedImage | ImageResult]) -> list[InferredImage | ImageResult]:
        """[model thread] Detector and segmenter on a batch; failed inputs pass through.

        When the batch fails as a whole, each image is retried alone so that only the culprit is ``failed``.
        """
        if not isinstance(batch, PreparedBatch):
            batch = self.collate(batch)
        prepared = [x for x in batch.inputs if isinstance(x, PreparedImage)]
        done: dict[int, InferredImage | ImageResult] = {}
        if prepared:
            try:
                for p, r in zip(prepared, self._models(prepared, batch.sam_inputs)):
                    done[id(p)] = r
            except Exception:  # noqa: BLE001
                for p in prepared:
                    try:
                        done[id(p)] = self._models([p], None)[0]
                    except Exception as e:  # noqa: BLE001
                        done[id(p)] = ImageResult(p.item, ImageStatus.FAILED, p.image_hw, reason=one_line(e))
        return [done[id(x)] if isinstance(x, PreparedImage) else x for x in batch.inputs]

    def finish(self, x: InferredImage | ImageResult) -> ImageResult:
        """[CPU pool] SAM's masks upsampled and cropped, then polygons, for one image (failures pass through)."""
        return self.cpu_steps.finish(x)

    def process(self, inputs: Sequence[DecodedImage | ImageResult]) -> list[ImageResult]:
        """All steps for a batch on the calling thread (tests, benchmarks, small jobs)."""
        return [self.finish(x) for x in self.infer([self.prepare(x) for x in inputs])]

    def _models(self, prepared: Sequence[PreparedImage], sam_inputs) -> list[InferredImage]:
        n = len(prepared)
        hws = [p.image_hw for p in prepared]
        t0 = time.perf_counter()
        if getattr(self.detector, "makes_masks", False):  # prompts: everything (annotator/everything.py)
            if sam_inputs is None:
                sam_inputs = np.stack([p.sam_input for p in prepared])
            dets, outs = self.detector(self.segmenter, sam_inputs, hws)
            secs = {"segment": (time.perf_counter() - t0) / n}
            return [
                InferredImage(p.item, p.image_hw, d, o, seconds={**p.seconds, **secs})
                for p, d, o in zip(prepared, dets, outs)
            ]
        if self.cuda_path:
            return self._models_cuda_order(prepared, sam_inputs)
        if all(p.detections is not None for p in prepared):
            dets = [p.detections for p in prepared]  # detected by a separate step (Ray split mode)
            kept = [p.kept for p in prepared]
        else:
            dets, kept = self._prompts(prepared)
        t1 = time.perf_counter()
        if sam_inputs is None:
            sam_inputs = np.stack([p.sam_input for p in prepared])
        outs = self.segmenter.infer(sam_inputs, hws, dets)
        t2 = time.perf_counter()
        return [
            InferredImage(p.item, p.image_hw, d, o, k, seconds={**p.seconds, "detect": (t1 - t0) / n, "segment": (t2 - t1) / n})
            for p, d, o, k in zip(prepared, dets, outs, kept)
        ]

    def _models_cuda_order(self, prepared: Sequence[PreparedImage], sam_inputs) -> list[InferredImage]:
        """The CUDA code path's order: detector launched, SAM encoder queued on every image, then the detector's
        results read back (ONE device-to-host copy for the batch, NMS on the host while the GPU encodes), then
        prompt encoder + decoder and SAM's one copy: at most 2 host syncs per batch (``benchmarks/syncs.py``)."""
        n = len(prepared)
        hws = [p.image_hw for p in prepared]
        if sam_inputs is None:
            sam_inputs = np.stack([p.sam_input for p in prepared])
        t0 = time.perf_counter()
        launched = None
        if all(p.detections is not None for p in prepared):
            dets, kept = [p.detections for p in prepared], [p.kept for p in prepared]  # Ray split mode
        elif isinstance(self.detector, Detector) and self.detector.batched_nms:
            launched = self._launch(prepared)
        else:  # label files (prompts: boxes / points: host data), or a detector whose NMS is Ultralytics'
            dets, kept = self._prompts(prepared)
        t1 = time.perf_counter()
        feats = self.segmenter.encode_batch(sam_inputs)  # queued before any host work on the detector's output
        t2 = time.perf_counter()
        if launched is not None:
            dets, kept = self._collect(*launched), [()] * n
        t3 = time.perf_counter()
        outs = self.segmenter.decode_batch(feats, hws, dets)
        t4 = time.perf_counter()
        secs = {"detect": (t1 - t0 + t3 - t2) / n, "segment": (t2 - t1 + t4 - t3) / n}
        return [
            InferredImage(p.item, p.image_hw, d, o, k, seconds={**p.seconds, **secs})
            for p, d, o, k in zip(prepared, dets, outs, kept)
        ]

    def _detector_batches(self, prepared: Sequence[PreparedImage]) -> list[list[int]]:
        """Indices of ``prepared`` per detector call: images that letterbox to the same input shape together
        (whatever their original sizes), at most ``det_batch`` per call."""
        by_shape: dict[tuple, list[int]] = {}
        for i, p in enumerate(prepared):
            by_shape.setdefault(tuple(np.shape(p.det_input)), []).append(i)
        step = self.det_batch
        return [idxs[k : k + step] for idxs in by_shape.values() for k in range(0, len(idxs), step)]

    def _launch(self, prepared: Sequence[PreparedImage]):
        """Queue the detector calls of a batch (each exactly ``det_batch`` images, the last padded with copies)."""
        chunks = self._detector_batches(prepared)
        launches = []
        for chunk in chunks:
            pad = self.det_batch - len(chunk)
            batch = np.stack([prepared[i].det_input for i in chunk + chunk[-1:] * pad])
            launches.append(self.detector.launch(batch, [prepared[i].image_hw for i in chunk + chunk[-1:] * pad]))
        return chunks, launches, len(prepared)

    def _collect(self, chunks: list[list[int]], launches: list, n: int) -> list[Detections]:
        """The queued detector calls' results in one copy (:meth:`Detector.collect`), in input order."""
        out: list = [None] * n
        for chunk, dets in zip(chunks, self.detector.collect(launches)):
            for i, d in zip(chunk, dets):
                out[i] = d
        return out

    def _prompts(self, prepared: Sequence[PreparedImage]) -> tuple[list[Detections], list[tuple]]:
        """Each image's box prompts, and the polygons kept as they are (``prompts: boxes``; none from a detector)."""
        if getattr(self.detector, "reads_labels", False):
            got = [self.detector.for_image(p.item.rel_path, p.image_hw) for p in prepared]
            return [g.boxes for g in got], [g.kept for g in got]
        return self.detect(prepared), [()] * len(prepared)

    def detect_only(self, inputs: Sequence[PreparedImage | ImageResult]) -> list[PreparedImage | ImageResult]:
        """[model thread] The detector step alone (Ray split mode): prepared images gain their detections and
        drop the detector input; a batch failing as a whole is re-run image by image."""
        if getattr(self.detector, "makes_masks", False):
            return list(inputs)  # prompts: everything runs on the segmenter's actor
        prepared = [x for x in inputs if isinstance(x, PreparedImage)]
        try:
            done = dict(zip(map(id, prepared), self._detected(prepared))) if prepared else {}
        except Exception:  # noqa: BLE001
            done = {}
            for p in prepared:
                try:
                    done[id(p)] = self._detected([p])[0]
                except Exception as e:  # noqa: BLE001
                    done[id(p)] = ImageResult(p.item, ImageStatus.FAILED, p.image_hw, reason=one_line(e))
        return [done[id(x)] if isinstance(x, PreparedImage) else x for x in inputs]

    def _detected(self, prepared: Sequence[PreparedImage]) -> list[PreparedImage]:
        t0 = time.perf_counter()
        dets, kept = self._prompts(prepared)
        per = (time.perf_counter() - t0) / len(prepared)
        return [
            replace(p, det_input=None, detections=d, kept=k, seconds={**p.seconds, "detect": per})
            for p, d, k in zip(prepared, dets, kept)
        ]

    def detect(self, prepared: Sequence[PreparedImage]) -> list[Detections]:
        """Detector calls of exactly ``det_batch`` images each that letterbox to one shape (the last padded with
        copies), one call per group (:meth:`_detector_batches`).

        Batched convolutions round differently for different batch sizes (YOLO confidences moved in the 7th
        digit on CPU), so an image must be computed in the same batch shape whatever else is processed with
        it: that makes a resumed or incremental run produce the very bytes of an uninterrupted one.
        On CPU ``det_batch`` is 1, as in Ultralytics' own loop.
        """
        out: list = [None] * len(prepared)
        for chunk in self._detector_batches(prepared):
            batch = [prepared[i].det_input for i in chunk]
            hws = [prepared[i].image_hw for i in chunk]
            pad = self.det_batch - len(batch)
            for i, d in zip(chunk, self.detector.infer(batch + batch[-1:] * pad, hws + hws[-1:] * pad)):
                out[i] = d
        return out


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class CpuSteps:
    """The model-free steps, picklable: what the CPU pools (local) and CPU tasks (Ray) run.

    Attributes:
        det_input: the detector's letterbox (:class:`annotator.detect.DetectorInput`), or None.
        polygonizer: masks -> polygons.
        finisher: SAM output -> instances (:class:`MaskFinisher`), or None.
    """

    det_input: Any
    polygonizer: Polygonizer
    finisher: MaskFinisher | None = None

    def prepare(self, x: DecodedImage | ImageResult) -> PreparedImage | ImageResult:
        """Letterbox one decoded image for the detector and for SAM (failed inputs pass through)."""
        if isinstance(x, ImageResult):
            return x
        t0 = time.perf_counter()
        try:
            det_in = self.det_input(x.image_bgr) if self.det_input is not None else None
            sam_in = letterbox_rgb(x.image_bgr) if self.finisher is not None else None
        except Exception as e:  # noqa: BLE001 - one image, never its neighbours
            return ImageResult(x.item, ImageStatus.FAILED, x.image_hw, reason=f"prepare: {one_line(e)}")
        return PreparedImage(x.item, x.image_hw, det_in, sam_in, {"prepare": time.perf_counter() - t0})

    def load(self, item: SourceItem, cfg: AnnotateConfig) -> PreparedImage | ImageResult:
        """Read, decode and :meth:`prepare` one input (the decode seconds recorded), or its failure."""
        t0 = time.perf_counter()
        decoded = decode_or_error(item, cfg)  # never blocks on a pipe; a bad file becomes its status
        t1 = time.perf_counter()
        p = self.prepare(decoded)
        return p if isinstance(p, ImageResult) else replace(p, seconds={**p.seconds, "decode": t1 - t0})

    def finish(self, x: InferredImage | ImageResult) -> ImageResult:
        """SAM's masks upsampled and cropped, then polygons, for one image (failures pass through)."""
        if isinstance(x, ImageResult):
            return x
        t0 = time.perf_counter()
        dropped: dict[str, int] = {}  # every detection that gives no label row, by reason (records.DropReason)
        try:
            instances = self.finisher(x.sam_output, x.detections, x.image_hw, dropped) if len(x.detections) else []
        except Exception as e:  # noqa: BLE001
            return ImageResult(x.item, ImageStatus.FAILED, x.image_hw, reason=f"masks: {one_line(e)}")
        t1 = time.perf_counter()
        try:
            polys = [*self.polygonizer(instances, dropped), *_usable(x.kept, dropped)]
        except Exception as e:  # noqa: BLE001
            return ImageResult(x.item, ImageStatus.FAILED, x.image_hw, reason=f"polygonize: {one_line(e)}")
        secs = {**x.seconds, "segment": x.seconds.get("segment", 0.0) + t1 - t0, "polygonize": time.perf_counter() - t1}
        status = ImageStatus.OK if polys else ImageStatus.EMPTY
        return ImageResult(x.item, status, x.image_hw, tuple(polys), seconds=secs, dropped=dropped)


@dataclass(frozen=True)
class PreparedImage:
    """An image letterboxed for both models (the decoded frame itself is no longer held).

    Attributes:
        det_input: ``(h, w, 3)`` uint8 BGR, letterboxed for the detector (``Detector.prepare``).
        sam_input: ``(1024, 1024, 3)`` uint8 RGB, letterboxed for SAM (``Segmenter.prepare``).
    """

    item: SourceItem
    image_hw: tuple[int, int]
    det_input: np.ndarray | None
    sam_input: np.ndarray | None
    seconds: dict[str, float] = field(default_factory=dict)
    detections: Detections | None = None  # set by a separate detector step (Ray split mode)
    kept: tuple = ()  # polygons kept as they are (prompts: boxes), with the detections


@dataclass(frozen=True)
class PreparedBatch:
    """One model batch: its inputs in order, and the SAM inputs of its prepared images stacked
    (``(B, 1024, 1024, 3)`` uint8, numpy or a pinned torch tensor), or None."""

    inputs: list
    sam_inputs: Any = None

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class InferredImage:
    """An image after the models: its detections and SAM's low-res output, in host memory."""

    item: SourceItem
    image_hw: tuple[int, int]
    detections: Detections
    sam_output: Any = None  # annotator.segment.SamOutput (host arrays): finish() turns it into instances
    kept: tuple = ()  # PolygonInstances kept as they are (prompts: boxes: label rows that are polygons already)
    seconds: dict[str, float] = field(default_factory=dict)


def _usable(kept: tuple[PolygonInstance, ...], dropped: dict[str, int]) -> list[PolygonInstance]:
    """The kept label polygons (``prompts: boxes``) with a part of >= 3 distinct vertices; the others (the
    writers would skip them) are counted in ``dropped`` as ``degenerate_polygon``."""
    out = []
    for p in kept:
        if any(len(np.unique(np.asarray(xy).reshape(-1, 2), axis=0)) >= 3 for xy in p.polygons_xy_px):
            out.append(p)
        else:
            add_dropped(dropped, DropReason.DEGENERATE)
    return out


def with_seconds(result: ImageResult, **seconds: float) -> ImageResult:
    """A copy of ``result`` with stage seconds added."""
    return replace(result, seconds={**result.seconds, **seconds})
