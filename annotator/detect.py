"""Detector stage: batched Ultralytics YOLO inference -> :class:`~annotator.records.Detections`.

Images of one batch that share a shape are run together; Ultralytics then letterboxes each exactly as it
does for a single image (minimal "rect" padding), so batched results equal one-at-a-time results (up to
float rounding of batched convolutions). Images of other shapes go in their own sub-batch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotator.models import load_yolo
from annotator.records import Detections


class TorchThreads:
    """The torch CPU thread count a stage runs its models with, kept stable for the stage's lifetime.

    Ultralytics' ``select_device`` calls ``torch.set_num_threads(min(8, cpu_count - 1))`` whenever a YOLO or
    SAM predictor is set up (lazily, on its first call), which silently changes the process's thread count.
    A stage captures the count that ``select_device`` leaves (so by default our models run with the threads
    Ultralytics would use, leaving a core for the decode and writer threads) and re-applies it before each
    model call; set :attr:`n` to choose another count (``annotator bench --threads``).

    On a 2-core machine this default is 1 thread: measured in docs/performance.md, 2 threads speed the image
    encoder up only on an otherwise idle machine and slow everything down under load (OpenMP oversubscription).
    """

    def __init__(self, device: str = "") -> None:
        import torch
        from ultralytics.utils.torch_utils import select_device

        select_device(device, verbose=False)  # what the predictor will do on its first call
        self.n = torch.get_num_threads()

    def apply(self) -> None:
        """Set the count for this thread's parallel regions (and MKL's, which is process-wide: CPU shards of
        the segmenter set their own, so this is set unconditionally; it costs microseconds)."""
        import torch

        torch.set_num_threads(self.n)


@dataclass(frozen=True)
class DetectorInput:
    """The detector's letterbox, as Ultralytics' predictor applies it to a batch of same-shape images.

    Attributes:
        imgsz_hw: model input size ``(height, width)`` after Ultralytics' stride check.
        stride: the model's largest stride (padding multiple when ``auto``).
        auto: minimal "rect" padding to a multiple of ``stride`` (PyTorch models) instead of a full square.
        scale_fill: stretch instead of letterbox (never for PyTorch models).

    Example:
        >>> spec = DetectorInput((640, 640), 32, True)
        >>> spec(np.zeros((480, 640, 3), np.uint8)).shape
        (480, 640, 3)
    """

    imgsz_hw: tuple[int, int]
    stride: int
    auto: bool
    scale_fill: bool = False

    def __post_init__(self) -> None:
        import ultralytics.data.augment  # noqa: F401 - imported once here, not by the first pool threads at once

    def __call__(self, image_bgr: np.ndarray) -> np.ndarray:
        from ultralytics.data.augment import LetterBox

        box = LetterBox(self.imgsz_hw, auto=self.auto, scale_fill=self.scale_fill, stride=self.stride)
        return box(image=image_bgr)


def precision_kwargs(fp16: bool) -> dict:
    """Ultralytics' predict argument for fp16, in the spelling the installed version supports: ``quantize=16``
    (``half`` is deprecated there and warns on every call, even ``half=False``), ``half=`` before it existed.

    Example:
        >>> precision_kwargs(False) in ({"quantize": None}, {"half": False})
        True
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT

    if "quantize" in DEFAULT_CFG_DICT:
        return {"quantize": 16 if fp16 else None}
    return {"half": fp16}


@dataclass(frozen=True)
class DetectorLaunch:
    """A detector batch queued on the device (:meth:`Detector.launch`), not yet read back.

    Attributes:
        candidates: ``(B, A, 6)`` float32 device tensor (:func:`annotator.batched_nms.device_candidates`).
        input_hw: the letterboxed model input's ``(height, width)``.
        image_hws: each image's original ``(height, width)`` (``B`` of them).
    """

    candidates: object
    input_hw: tuple[int, int]
    image_hws: list


class Detector:
    """Run a YOLO detector on BGR images.

    Args:
        weights: local ``.pt`` path (see :func:`annotator.models.resolve_weights`).
        conf, iou, imgsz, max_det, classes: as in Ultralytics ``predict``.
        device: ``""`` (auto), ``"cpu"``, ``"0"``, ``"cuda:1"``...
        half: fp16 inference on CUDA (ignored on CPU).
        with_masks: a ``-seg`` model's masks go with the boxes (``Detections.det_masks``, see
            :mod:`annotator.detector_masks`); refused with a one-line ConfigError for a plain detector.

    Example:
        >>> det = Detector(Path("yolo11n.pt"))  # doctest: +SKIP
        >>> [d.xyxy_px.shape for d in det([np.zeros((480, 640, 3), np.uint8)])]  # doctest: +SKIP
        [(0, 4)]
    """

    def __init__(
        self,
        weights: Path,
        *,
        conf: float = 0.25,
        iou: float = 0.45,
        imgsz: int | tuple[int, int] = 640,
        max_det: int = 300,
        classes: Sequence[int] | None = None,
        device: str = "",
        half: bool = False,
        trust: bool = False,
        with_masks: bool = False,
    ) -> None:
        self.threads = TorchThreads(device)
        self.model = load_yolo(weights, trust=trust)
        self.with_masks = with_masks
        if with_masks and getattr(self.model, "task", None) != "segment":
            from annotator.errors import ConfigError

            raise ConfigError(
                f"detector_masks needs a segmentation detector (a -seg model), but {Path(weights).name} is a "
                f"{getattr(self.model, 'task', '?')} model: use e.g. yolo11n-seg.pt or set detector_masks: ignore"
            )
        self.names: dict[int, str] = {int(k): str(v) for k, v in self.model.names.items()}
        self._kwargs = dict(
            conf=conf,
            iou=iou,
            imgsz=imgsz if isinstance(imgsz, int) else list(imgsz),
            max_det=max_det,
            classes=list(classes) if classes is not None else None,
            device=device,
            verbose=False,
            save=False,
        )
        self._half = half
        self._setup_lock = threading.Lock()
        self._input_spec: DetectorInput | None = None
        self._predictor_ready = False

    def __call__(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """Detect objects in each ``(H, W, 3)`` uint8 BGR image; returns one :class:`Detections` per image.

        Same as :meth:`prepare` on each image, then :meth:`infer` per group of same-shape images.
        """
        out: list[Detections | None] = [None] * len(images_bgr)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images_bgr):
            by_shape.setdefault(tuple(im.shape), []).append(i)
        for idxs in by_shape.values():
            prepared = [self.prepare(images_bgr[i]) for i in idxs]
            for i, d in zip(idxs, self.infer(prepared, [images_bgr[i].shape[:2] for i in idxs])):
                out[i] = d
        return [d if d is not None else Detections.empty() for d in out]

    def prepare(self, image_bgr: np.ndarray) -> np.ndarray:
        """Letterbox one image for the detector (:attr:`input_spec`): ``(h, w, 3)`` uint8 BGR.

        CPU only, no torch: runs in the engine's preparation pool, on any thread.
        """
        return self.input_spec(image_bgr)

    @property
    def input_spec(self) -> DetectorInput:
        """How this detector's inputs are letterboxed (picklable: CPU workers prepare without the model)."""
        if self._input_spec is None:
            p = self._predictor()
            auto = bool(p.args.rect) and not p.scale_fill and p.model.format == "pt"
            self._input_spec = DetectorInput(tuple(p.imgsz), int(p.model.stride), auto, bool(p.scale_fill))
        return self._input_spec

    def infer(self, prepared: Sequence[np.ndarray], image_hws: Sequence[tuple[int, int]]) -> list[Detections]:
        """Detect on a batch of :meth:`prepare`-d images that share one shape (the model thread's work).

        Args:
            prepared: ``(h, w, 3)`` uint8 BGR letterboxed images, all of one shape (or one stacked
                ``(B, h, w, 3)`` array / uint8 tensor, e.g. in pinned memory).
            image_hws: each image's original ``(height, width)``, to map the boxes back.

        Uploads the uint8 batch once (non-blocking from pinned memory), then Ultralytics' own steps: RGB,
        ``/255``, model, NMS, box scaling. Returns one :class:`Detections` per image, boxes in original pixels.
        """
        import torch

        predictor = self._predictor()
        if isinstance(prepared, torch.Tensor):
            batch = prepared
        else:
            batch = torch.from_numpy(prepared if isinstance(prepared, np.ndarray) else np.stack(prepared))
        if batch.shape[0] == 0:
            return []
        self.threads.apply()
        with torch.inference_mode():
            im = batch.to(predictor.device, non_blocking=True).permute(0, 3, 1, 2).contiguous().flip(1)
            im = (im.half() if predictor.model.fp16 else im.float()).div_(255)
            preds = predictor.inference(im)
            # postprocess reads only the original images' shapes: stand-ins without pixels
            shells = [np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (h, w, 3)) for h, w in image_hws]
            predictor.batch = ([""] * len(shells), shells, [""] * len(shells))
            results = predictor.postprocess(preds, im, shells)
        if self.with_masks:
            from annotator.detector_masks import masks_from_results
        out = []
        for r, hw in zip(results, image_hws):
            b = r.boxes
            masks = masks_from_results(r, (int(hw[0]), int(hw[1]))) if self.with_masks else None
            out.append(
                Detections(
                    xyxy_px=b.xyxy.float().cpu().numpy().astype(np.float32).reshape(-1, 4),
                    class_ids=b.cls.int().cpu().numpy().astype(np.int64).reshape(-1),
                    det_conf=b.conf.float().cpu().numpy().astype(np.float32).reshape(-1),
                    det_masks=masks,
                )
            )
        return out

    @property
    def batched_nms(self) -> bool:
        """The CUDA code path's NMS applies (:mod:`annotator.batched_nms`): a plain detector (not ``-seg`` with
        masks kept, not an end-to-end model) with one best class per box."""
        p = self._predictor()
        return (
            not self.with_masks
            and p.args.task == "detect"
            and not getattr(p.model, "end2end", False)
            and not getattr(p.args, "multi_label", False)
        )

    def launch(self, prepared, image_hws: Sequence[tuple[int, int]]) -> DetectorLaunch:
        """[model thread, CUDA code path] Queue the detector on a batch of :meth:`prepare`-d images of one shape:
        upload, model and the sync-free part of NMS (:func:`annotator.batched_nms.device_candidates`). Nothing is
        read back: hand the launches of a batch to :meth:`collect` once the next device work is queued."""
        import torch

        from annotator.batched_nms import device_candidates

        predictor = self._predictor()
        batch = prepared if isinstance(prepared, torch.Tensor) else torch.from_numpy(
            prepared if isinstance(prepared, np.ndarray) else np.stack(prepared)
        )
        self.threads.apply()
        with torch.inference_mode():
            im = batch.to(predictor.device, non_blocking=True).permute(0, 3, 1, 2).contiguous().flip(1)
            im = (im.half() if predictor.model.fp16 else im.float()).div_(255)
            preds = predictor.inference(im)
            a = predictor.args
            cand = device_candidates(preds, a.conf, a.classes)
        return DetectorLaunch(cand, tuple(int(v) for v in im.shape[2:]), [tuple(map(int, hw)) for hw in image_hws])

    def collect(self, launches: Sequence[DetectorLaunch]) -> list[list[Detections]]:
        """[model thread] The launches' candidates to the host in ONE copy, then NMS and box scaling there (numpy):
        one list of :class:`Detections` per launch, its images' original pixels (padding images included)."""
        import torch

        from annotator.batched_nms import host_nms, scale_to_image

        if not launches:
            return []
        with torch.inference_mode():
            parts = [x.candidates.reshape(-1) for x in launches]
            flat = torch.cat(parts) if len(parts) > 1 else parts[0]
            host = flat.cpu().numpy()  # the detector's one device-to-host copy per batch
        a = self._predictor().args
        out, start = [], 0
        for x in launches:
            b, n_anchors, _ = x.candidates.shape
            cand = host[start : start + b * n_anchors * 6].reshape(b, n_anchors, 6)
            start += b * n_anchors * 6
            dets = []
            for k, hw in enumerate(x.image_hws):
                kept = host_nms(cand[k], a.iou, a.max_det, agnostic=bool(a.agnostic_nms))
                kept = scale_to_image(kept, x.input_hw, hw)
                dets.append(Detections(
                    xyxy_px=np.ascontiguousarray(kept[:, :4], np.float32).reshape(-1, 4),
                    class_ids=kept[:, 5].astype(np.int64),
                    det_conf=np.ascontiguousarray(kept[:, 4], np.float32),
                ))  # fmt: skip
            out.append(dets)
        return out

    def _predictor(self):
        """Ultralytics' predictor, set up once by a warm-up call on a blank image (same settings as ours)."""
        if not self._predictor_ready:  # Ultralytics sets model.predictor before it is set up: a flag of our own
            with self._setup_lock:
                if not self._predictor_ready:
                    self.threads.apply()
                    size = self._kwargs["imgsz"]
                    h, w = (size, size) if isinstance(size, int) else size
                    blank = np.zeros((h, w, 3), np.uint8)
                    self.model.predict(blank, **precision_kwargs(self._half and self._on_cuda()), **self._kwargs)
                    self.threads.apply()  # setting the predictor up changed the thread count again
                    self._predictor_ready = True
        return self.model.predictor

    def _on_cuda(self) -> bool:
        dev = str(self._kwargs["device"])
        if dev == "cpu":
            return False
        import torch

        return torch.cuda.is_available()
