"""The model stages bundled for a runner, and the per-batch work every runner shares.

A runner (``pipelines/local.py`` in-process, ``pipelines/ray_images.py`` on Ray) decides *where* and *how
many*; this module decides *what*: decode -> detect -> segment -> polygonize for a batch of inputs, with
per-image failures turned into :class:`~annotator.records.ImageResult` statuses instead of exceptions.

Example:
    >>> stages = Stages.build(cfg, models)  # doctest: +SKIP
    >>> results = stages.process([load_or_error(item, cfg) for item in items])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from annotator.config import AnnotateConfig
from annotator.detect import Detector
from annotator.models import ResolvedModels
from annotator.polygons import Polygonizer
from annotator.records import Detections, DecodedImage, ImageResult, ImageStatus, Instance, SourceItem
from annotator.segment import Segmenter
from annotator.sources import ImageDecodeError, decode_image_bytes, max_file_bytes, read_image_bytes


def _one_line(e: BaseException) -> str:
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
        return ImageResult(item, ImageStatus.DECODE_ERROR, reason=f"unreadable: {_one_line(e)}")
    except Exception as e:  # a decoder bug on one hostile file must not stop the run
        return ImageResult(item, ImageStatus.FAILED, reason=f"decode: {_one_line(e)}")


@dataclass
class Stages:
    """Detector, segmenter and polygonizer, each loaded once."""

    detector: Detector
    segmenter: Segmenter
    polygonizer: Polygonizer
    det_batch: int = 1

    @classmethod
    def build(
        cls, cfg: AnnotateConfig, models: ResolvedModels, *, parts: tuple[str, ...] = ("detector", "segmenter")
    ) -> Stages:
        """Load the models named in ``parts`` (``"detector"``, ``"segmenter"``) once; the polygonizer always."""
        compat = cfg.compat == "ultralytics"
        detector = segmenter = None
        if "detector" in parts:
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
        if cfg.torch_threads is not None:  # else the count Ultralytics' select_device picks (see TorchThreads)
            for stage in (detector, segmenter):
                if stage is not None:
                    stage.threads.n = cfg.torch_threads
        on_cpu = str(cfg.device).strip().lower() == "cpu" or not _cuda_available()
        return cls(
            detector,  # type: ignore[arg-type]
            segmenter,  # type: ignore[arg-type]
            cls.build_polygonizer(cfg),
            det_batch=1 if on_cpu else cfg.batch_size,
        )

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

    def process(self, inputs: Sequence[DecodedImage | ImageResult]) -> list[ImageResult]:
        """Models and polygons for a batch: :meth:`infer` then :meth:`polygonize` for each image."""
        return [self.polygonize(x) for x in self.infer(inputs)]

    def infer(self, inputs: Sequence[DecodedImage | ImageResult]) -> list[InferredImage | ImageResult]:
        """Run detector and segmenter on the decoded images of a batch; pass already-failed inputs through.

        When the batch fails as a whole, each image is retried alone so that only the culprit is marked
        ``failed``; the others keep their results.
        """
        decoded = [x for x in inputs if isinstance(x, DecodedImage)]
        done: dict[int, InferredImage | ImageResult] = {}
        if decoded:
            try:
                for d, r in zip(decoded, self._models(decoded)):
                    done[id(d)] = r
            except Exception:
                for d in decoded:
                    try:
                        done[id(d)] = self._models([d])[0]
                    except Exception as e:
                        done[id(d)] = ImageResult(d.item, ImageStatus.FAILED, d.image_hw, reason=_one_line(e))
        return [done[id(x)] if isinstance(x, DecodedImage) else x for x in inputs]

    def polygonize(self, x: InferredImage | ImageResult) -> ImageResult:
        """Masks -> polygons for one image (failed inputs pass through)."""
        if isinstance(x, ImageResult):
            return x
        t0 = time.perf_counter()
        try:
            polys = self.polygonizer(x.instances)
        except Exception as e:
            return ImageResult(x.item, ImageStatus.FAILED, x.image_hw, reason=f"polygonize: {_one_line(e)}")
        secs = {**x.seconds, "polygonize": time.perf_counter() - t0}
        status = ImageStatus.OK if polys else ImageStatus.EMPTY
        return ImageResult(x.item, status, x.image_hw, tuple(polys), seconds=secs)

    def _models(self, decoded: Sequence[DecodedImage]) -> list[InferredImage]:
        images = [d.image_bgr for d in decoded]
        n = len(images)
        t0 = time.perf_counter()
        dets = self.detect(images)
        t1 = time.perf_counter()
        insts = self.segmenter(images, dets)
        t2 = time.perf_counter()
        secs = {"detect": (t1 - t0) / n, "segment": (t2 - t1) / n}
        return [InferredImage(d.item, d.image_hw, i, dict(secs)) for d, i in zip(decoded, insts)]


    def detect(self, images: Sequence) -> list[Detections]:
        """Detector calls of exactly ``det_batch`` same-shape images each (the last padded with copies).

        Batched convolutions round differently for different batch sizes (YOLO confidences moved in the 7th
        digit on CPU), so an image must be computed in the same batch shape whatever else is processed with
        it: that makes a resumed or incremental run produce the very bytes of an uninterrupted one.
        On CPU ``det_batch`` is 1, as in Ultralytics' own loop.
        """
        out: list = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape), []).append(i)
        for idxs in by_shape.values():
            for k in range(0, len(idxs), self.det_batch):
                chunk = idxs[k : k + self.det_batch]
                batch = [images[i] for i in chunk]
                batch += [batch[-1]] * (self.det_batch - len(batch))
                for i, d in zip(chunk, self.detector(batch)):
                    out[i] = d
        return out


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class InferredImage:
    """An image after the models: its instances (masks) before polygonization."""

    item: SourceItem
    image_hw: tuple[int, int]
    instances: list[Instance]
    seconds: dict[str, float] = field(default_factory=dict)


def with_seconds(result: ImageResult, **seconds: float) -> ImageResult:
    """A copy of ``result`` with stage seconds added."""
    return replace(result, seconds={**result.seconds, **seconds})
