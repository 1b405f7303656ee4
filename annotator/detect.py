"""Detector stage: batched Ultralytics YOLO inference -> :class:`~annotator.records.Detections`.

Images of one batch that share a shape are run together; Ultralytics then letterboxes each exactly as it
does for a single image (minimal "rect" padding), so batched results equal one-at-a-time results (up to
float rounding of batched convolutions). Images of other shapes go in their own sub-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class Detector:
    """Run a YOLO detector on BGR images.

    Args:
        weights: local ``.pt`` path (see :func:`annotator.models.resolve_weights`).
        conf, iou, imgsz, max_det, classes: as in Ultralytics ``predict``.
        device: ``""`` (auto), ``"cpu"``, ``"0"``, ``"cuda:1"``...
        half: fp16 inference on CUDA (ignored on CPU).

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
        imgsz: int = 640,
        max_det: int = 300,
        classes: Sequence[int] | None = None,
        device: str = "",
        half: bool = False,
        trust: bool = False,
    ) -> None:
        self.threads = TorchThreads(device)
        self.model = load_yolo(weights, trust=trust)
        self.names: dict[int, str] = {int(k): str(v) for k, v in self.model.names.items()}
        self._kwargs = dict(
            conf=conf,
            iou=iou,
            imgsz=imgsz,
            max_det=max_det,
            classes=list(classes) if classes is not None else None,
            device=device,
            verbose=False,
            save=False,
        )
        self._half = half

    def __call__(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """Detect objects in each ``(H, W, 3)`` uint8 BGR image; returns one :class:`Detections` per image."""
        out: list[Detections | None] = [None] * len(images_bgr)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images_bgr):
            by_shape.setdefault(tuple(im.shape), []).append(i)
        for idxs in by_shape.values():
            self.threads.apply()
            results = self.model.predict(
                [images_bgr[i] for i in idxs], batch=len(idxs), half=self._half and self._on_cuda(), **self._kwargs
            )
            self.threads.apply()  # the first predict set up its predictor, which sets the thread count again
            for i, r in zip(idxs, results):
                b = r.boxes
                out[i] = Detections(
                    xyxy_px=b.xyxy.float().cpu().numpy().astype(np.float32).reshape(-1, 4),
                    class_ids=b.cls.int().cpu().numpy().astype(np.int64).reshape(-1),
                    det_conf=b.conf.float().cpu().numpy().astype(np.float32).reshape(-1),
                )
        return [d if d is not None else Detections.empty() for d in out]

    def _on_cuda(self) -> bool:
        dev = str(self._kwargs["device"])
        if dev == "cpu":
            return False
        import torch

        return torch.cuda.is_available()
