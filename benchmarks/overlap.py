"""Does the GPU never wait? The local engine with stand-in models of fixed latency, on this machine's CPUs.

The models are replaced by stand-ins that take a fixed time per batch and release the GIL (a timed wait, as
a GPU kernel leaves the CPU free), and return realistic outputs: boxes, and SAM logits that are blobs inside
those boxes. Everything else is the real engine: reading and decoding JPEG files, letterboxing for both
models, collating, mask upsampling, polygons, writing label files and the ledger through ``api.run``.

If the CPU lanes overlap the model thread, the run takes ``batches x latency`` (the *model-bound* time) and
the reported fraction ``achieved / model-bound`` is close to 1; a serial pipeline would get
``latency / (latency + cpu time)``. The CPU work per image is reported too, divided by the cores: the
fraction can only reach 1 when that is below the model time per image.

``--real`` runs the real models instead (``--det-model``, ``--sam-model``) and reports how busy the model
thread is with model calls versus waiting for input or for the finishing lanes.

Example::

    python -m benchmarks.overlap --images 64 --image-hw 1080x1920 --latency-ms 320 --batch-size 8
    python -m benchmarks.overlap --real --det-model yolo11x.pt --sam-model sam2_b.pt --device 0 --images 256
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from annotator.detect import DetectorInput
from annotator.records import Detections
from annotator.segment import MaskFinisher, SamOutput, usable_cores
from annotator.stages import Stages

_LOWRES = 256


class FixedLatencyDetector:
    """A detector stand-in: ``latency_s`` per call, ``boxes`` boxes per image on a fixed grid."""

    names = {0: "object"}

    def __init__(self, latency_s: float, boxes: int, imgsz: int = 640) -> None:
        self.latency_s, self.boxes = latency_s, boxes
        self.input_spec = DetectorInput((imgsz, imgsz), 32, True)
        self.calls = 0

    def prepare(self, image_bgr: np.ndarray) -> np.ndarray:
        return self.input_spec(image_bgr)

    def infer(self, prepared, image_hws) -> list[Detections]:
        self.calls += 1
        time.sleep(self.latency_s)  # releases the GIL, as a GPU kernel leaves the CPU free
        return [grid_boxes(hw, self.boxes) for hw in image_hws]


class FixedLatencySegmenter:
    """A SAM stand-in: ``latency_s`` per call; each box's logits are an ellipse inscribed in it."""

    finisher = MaskFinisher(min_score=0.0)
    cpu_workers = None
    encoder_batch = 1

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.calls = 0

    def infer(self, sam_inputs, image_hws, detections) -> list[SamOutput]:
        self.calls += 1
        time.sleep(self.latency_s)
        return [ellipse_logits(hw, d) for hw, d in zip(image_hws, detections)]


def grid_boxes(image_hw: tuple[int, int], n: int) -> Detections:
    """``n`` boxes on a grid covering the image, ``(n, 4)`` xyxy pixels."""
    h, w = image_hw
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    boxes = []
    for k in range(n):
        r, c = divmod(k, cols)
        x0, y0 = (c + 0.15) * w / cols, (r + 0.15) * h / rows
        boxes.append([x0, y0, x0 + 0.7 * w / cols, y0 + 0.7 * h / rows])
    xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Detections(xyxy, np.zeros(len(xyxy), np.int64), np.full(len(xyxy), 0.9, np.float32))


def ellipse_logits(image_hw: tuple[int, int], det: Detections) -> SamOutput:
    """Low-res logits ``(N, 256, 256)``: +8 inside the ellipse inscribed in each box, -8 outside."""
    scale = _LOWRES / max(image_hw)  # SAM's top-left letterbox, in low-res pixels
    yy, xx = np.mgrid[0:_LOWRES, 0:_LOWRES].astype(np.float32) + 0.5
    logits = np.empty((len(det), _LOWRES, _LOWRES), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(det.xyxy_px * scale):
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 1), max((y1 - y0) / 2, 1)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        logits[i] = np.where(inside, 8.0, -8.0)
    return SamOutput(logits, np.full(len(det), 0.9, np.float32))


@dataclass
class OverlapResult:
    images: int
    batch_size: int
    latency_s: float
    cores: int
    seconds: float
    model_bound_s: float
    cpu_s_per_image: float
    model_busy_share: float
    cpu_ms_per_stage: dict

    @property
    def fraction(self) -> float:
        """Achieved rate as a fraction of the model-bound rate (1.0: the models never waited)."""
        return self.model_bound_s / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        per_img_model = self.model_bound_s / self.images
        return [
            f"images {self.images}, batch {self.batch_size}, stand-in latency {self.latency_s * 1e3:.0f} ms per "
            f"model per batch, {self.cores} cores",
            f"model-bound: {self.images / self.model_bound_s:.1f} images/s; achieved: "
            f"{self.images / self.seconds:.1f} images/s -> fraction {self.fraction:.3f}",
            f"CPU work per image {self.cpu_s_per_image * 1e3:.1f} ms / {self.cores} cores = "
            f"{self.cpu_s_per_image / self.cores * 1e3:.1f} ms vs model {per_img_model * 1e3:.1f} ms per image",
            "CPU ms per image by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in self.cpu_ms_per_stage.items()),
            f"model thread busy in model calls: {self.model_busy_share:.1%}",
        ]


def write_jpegs(folder: Path, n: int, image_hw: tuple[int, int], seed: int = 0) -> None:
    """``n`` JPEG files of textured noise with shapes (realistic decode cost)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = image_hw
    base = cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h))
    for i in range(n):
        im = np.roll(base, 17 * i, axis=1).copy()
        cv2.circle(im, (int(rng.integers(0, w)), int(rng.integers(0, h))), max(8, h // 8), (0, 0, 255), -1)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), im, [cv2.IMWRITE_JPEG_QUALITY, 90])


def run_stand_in(
    images: int = 32, image_hw: tuple[int, int] = (720, 1280), latency_s: float = 0.2, batch_size: int = 8,
    boxes: int = 7, workers: int | None = None, workdir: Path | None = None,
) -> OverlapResult:  # fmt: skip
    """Run the local engine through ``api.run`` with stand-in models of ``latency_s`` per batch each."""
    from annotator.api import run
    from annotator.config import make_config

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        write_jpegs(root / "images", images, image_hw)
        for name in ("standin_det.pt", "sam2_t.pt"):  # names to resolve; the stand-ins never load them
            (root / name).write_bytes(b"stand-in")
        cfg = make_config(
            data=root / "images", det_model=str(root / "standin_det.pt"), sam_model=str(root / "sam2_t.pt"),
            output_dir=root / "out", batch_size=batch_size, device="cpu", workers=workers, format="both",
        )  # fmt: skip
        det, seg = FixedLatencyDetector(latency_s / 2, boxes), FixedLatencySegmenter(latency_s / 2)
        stages = Stages(det, seg, Stages.build_polygonizer(cfg), det_batch=batch_size)  # type: ignore[arg-type]
        summary = run(cfg, engine_options={"stages": stages})
    assert summary.images_seen == images and summary.failed == 0, summary.failures[:3]
    calls = det.calls + seg.calls
    cpu = sum(v for k, v in summary.seconds_per_stage.items() if k not in ("detect",)) - seg.calls * seg.latency_s
    stats = summary.engine_stats
    return OverlapResult(
        images=images, batch_size=batch_size, latency_s=latency_s / 2, cores=workers or usable_cores(),
        seconds=summary.processing_s, model_bound_s=calls * latency_s / 2, cpu_s_per_image=cpu / images,
        model_busy_share=stats["model_busy_s"] / stats["model_thread_s"],
        cpu_ms_per_stage={
            k: (v - (seg.calls * seg.latency_s if k == "segment" else 0)) / images * 1e3
            for k, v in summary.seconds_per_stage.items() if k != "detect"
        },
    )  # fmt: skip


def run_real(ns: argparse.Namespace) -> dict:
    """The real models on JPEGs: the model thread's busy share and the run's rate."""
    from annotator.api import run
    from annotator.config import make_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = Path(ns.data) if ns.data else root / "images"
        if not ns.data:
            write_jpegs(data, ns.images, ns.image_hw)
        cfg = make_config(
            data=data, det_model=ns.det_model, sam_model=ns.sam_model, device=ns.device, output_dir=root / "out",
            batch_size=ns.batch_size, workers=ns.workers, format="both", compile=ns.compile,
        )  # fmt: skip
        s = run(cfg)
    st = s.engine_stats
    return {
        "images": s.images_seen,
        "images_per_s": round(s.images_per_s, 2),
        "model_busy_share": round(st["model_busy_s"] / st["model_thread_s"], 3),
        "model_wait_share": round(st["model_wait_s"] / st["model_thread_s"], 3),
        "model_blocked_share": round(st["model_blocked_s"] / st["model_thread_s"], 3),
        "seconds_per_stage": {k: round(v / max(1, s.images_seen) * 1e3, 2) for k, v in s.seconds_per_stage.items()},
    }


def _hw(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overlap", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--image-hw", type=_hw, default=(1080, 1920), help="HxW of the generated JPEGs")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--latency-ms", type=float, default=320.0, help="stand-in detector + SAM time per batch")
    p.add_argument("--boxes", type=int, default=7, help="stand-in detections per image")
    p.add_argument("--workers", type=int, default=None, help="CPU pool threads (default: cores)")
    p.add_argument("--real", action="store_true", help="real models: report the model thread's busy share")
    p.add_argument("--data", default=None, help="--real: a folder of images instead of generated JPEGs")
    p.add_argument("--det-model", default="yolo11x.pt")
    p.add_argument("--sam-model", default="sam2_b.pt")
    p.add_argument("--device", default="")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(argv)
    if ns.real:
        print(json.dumps(run_real(ns), indent=2))
        return 0
    r = run_stand_in(ns.images, ns.image_hw, ns.latency_ms / 1e3, ns.batch_size, ns.boxes, ns.workers)
    print(json.dumps({**r.__dict__, "fraction": round(r.fraction, 4)}) if ns.json else "\n".join(r.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
