"""``prompts: everything`` vs Ultralytics' ``SAM(...)(image)`` (its ``generate``), same settings, timed alternately.

Both segment the same synthetic image from a ``points_per_side**2`` grid, multimask, with the same predicted-IoU
and stability thresholds and NMS IoU (``crop_n_layers=0``), and end with masks at the image's size (ours:
polygons, the whole :meth:`Stages.process` from the decoded image; theirs: ``Results.masks``). Seconds per image
are the median over ``--repeats`` (the load average is printed: the machine may be shared).

    python benchmarks/everything.py --image-size 720x1280 --points-per-side 16 --repeats 2
    python benchmarks/everything.py --points-per-side 16 --points-per-batch 64 --repeats 2   # same batches
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main(argv=None) -> None:
    import torch
    from ultralytics import SAM
    from ultralytics.models.sam.predict import Predictor

    from annotator.config import make_config
    from annotator.models import resolve_models
    from annotator.records import DecodedImage, SourceItem
    from annotator.stages import Stages
    from annotator.synthetic import make_shapes_image
    from benchmarks.ground_truth import parse_hw

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sam-model", default=None, help="a sam2_t.pt checkpoint (default: random weights)")
    p.add_argument("--image-size", type=parse_hw, default=(720, 1280))
    p.add_argument("--points-per-side", type=int, default=16)
    p.add_argument("--points-per-batch", type=int, default=None,
                   help="points per decoder call in both pipelines (default: each its own: ours 4 on a CPU, 64 on a "
                   "GPU; Ultralytics 64)")  # fmt: skip
    p.add_argument("--pred-iou-min", type=float, default=0.88)
    p.add_argument("--stability-min", type=float, default=0.95)
    p.add_argument("--stability-offset", type=float, default=1.0)
    p.add_argument("--nms-iou", type=float, default=0.7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-everything-"))
    ckpt = a.sam_model
    if ckpt is None:
        from annotator.random_weights import write_random_sam

        ckpt = write_random_sam(tmp, "sam2_t", seed=0)
    image, _ = make_shapes_image(np.random.default_rng(0), a.image_size, n_objects=(4, 6))
    ev = dict(points_per_side=a.points_per_side, points_per_batch=a.points_per_batch, pred_iou_min=a.pred_iou_min,
              stability_min=a.stability_min, stability_offset=a.stability_offset, nms_iou=a.nms_iou)  # fmt: skip
    cfg = make_config(data=tmp, prompts="everything", everything=ev, sam_model=str(ckpt), device=a.device,
                      sam_min_score=0.0)
    stages = Stages.build(cfg, resolve_models(cfg.det_model, cfg.sam_model, det_stand_in=cfg.everything.digest()))
    decoded = DecodedImage(SourceItem(tmp / "bench.png", "bench.png"), image)

    sam = SAM(str(ckpt))
    Predictor.generate = functools.partialmethod(Predictor.generate, points_stride=a.points_per_side,
                                                 points_batch_size=a.points_per_batch or 64, conf_thres=a.pred_iou_min,
                                                 stability_score_thresh=a.stability_min,
                                                 stability_score_offset=a.stability_offset)  # fmt: skip

    def ours() -> int:
        r = stages.process([decoded])[0]
        if r.status.value not in ("ok", "empty"):
            raise SystemExit(f"annotator everything failed: {r.reason}")
        return len(r.instances)

    def theirs() -> int:
        r = sam(image, device=a.device, verbose=False, save=False, conf=0.0, iou=a.nms_iou)[0]
        return 0 if r.masks is None else len(r.masks)

    times: dict[str, list[float]] = {"annotator everything": [], "ultralytics generate": []}
    counts = {}
    ours(), theirs()  # warm-up
    for _ in range(a.repeats):
        for name, fn in (("annotator everything", ours), ("ultralytics generate", theirs)):
            t0 = time.perf_counter()
            counts[name] = fn()
            times[name].append(time.perf_counter() - t0)
    h, w = a.image_size
    batches = a.points_per_batch or "each pipeline's default"
    print(f"{h}x{w} image, {a.points_per_side}x{a.points_per_side} points, batches of {batches}, "
          f"device {a.device}, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:22s} {med:7.2f} s/image  {1 / med:6.3f} images/s  (range {min(ts):.2f}-{max(ts):.2f}, "
              f"{counts[name]} masks)")  # fmt: skip
    ratio = statistics.median(times["ultralytics generate"]) / statistics.median(times["annotator everything"])
    print(f"speed-up (ultralytics s/image / annotator s/image): {ratio:.2f}x")


if __name__ == "__main__":
    main()
