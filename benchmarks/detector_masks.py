"""What ``detector_masks`` changes: mask IoU against exact ground truth on synthetic shapes.

For each detection of a ``-seg`` detector matched to a ground-truth object (box IoU >= 0.5), the IoU of four
masks with the true mask: SAM with the box only (``detector_masks: ignore``), SAM with box + the detector's
mask as mask prompt (``prompt``), the detector's own mask, and the ``keep_better`` choice. Prints one table.

No trained -seg model and no real SAM weights ship with the project, and nothing is downloaded:

* ``--train``: a ``yolo11n-seg`` built from its yaml, its backbone and box head initialised from the project's
  shapes detector (``sample_data/models/shapes_yolo11n.pt``), trained a few CPU epochs on synthetic shapes
  (written to ``--workdir``, never to the repository);
* ``--sam``: SAM weights; without real ones (``sam2_t.pt`` with random weights, ``--random-sam``), SAM's
  numbers measure nothing but the plumbing: only the detector-mask column is meaningful then.

Run::

    python -m benchmarks.detector_masks --train --epochs 6 --random-sam     # ~8 min on 2 CPU cores
    python -m benchmarks.detector_masks --seg-model /tmp/detmasks/seg.pt --sam sam2_t.pt  # real SAM weights
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def train_seg(workdir: Path, epochs: int, n_train: int, imgsz: int) -> Path:
    """A ``yolo11n-seg`` trained on synthetic shapes (``workdir/seg.pt``); returns its path."""
    from ultralytics import YOLO

    from annotator.synthetic import SHAPE_NAMES, write_synthetic_dataset

    ds = workdir / "ds"
    if ds.exists():
        shutil.rmtree(ds)
    for split, n, seed in (("train", n_train, 1000), ("val", 30, 2000)):
        write_synthetic_dataset(ds / split, n, seed=seed, image_hw=(imgsz, imgsz), subdirs=("",), labels="segment")
    names = "".join(f"  {k}: {v}\n" for k, v in SHAPE_NAMES.items())
    (ds / "data.yaml").write_text(f"path: {ds}\ntrain: train/images\nval: val/images\nnames:\n{names}")
    model = YOLO("yolo11n-seg.yaml").load(str(REPO / "sample_data" / "models" / "shapes_yolo11n.pt"))
    model.train(data=str(ds / "data.yaml"), imgsz=imgsz, epochs=epochs, batch=16, workers=2, device="cpu",
                plots=False, amp=False, val=False, project=str(workdir / "runs"), name="seg", exist_ok=True, seed=0,
                deterministic=True, verbose=False)  # fmt: skip
    out = workdir / "seg.pt"
    shutil.copyfile(Path(model.trainer.last), out)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def measure(seg_model: Path, sam: str, n_images: int, image_hw: tuple[int, int], seed: int = 7) -> dict:
    """Mean mask IoU with the ground truth per mode over the matched detections (see the module docstring)."""
    from annotator.detect import Detector
    from annotator.mask_upsample import MaskFinisher
    from annotator.models import resolve_models
    from annotator.segment import Segmenter
    from annotator.synthetic import make_shapes_image

    rng = np.random.default_rng(seed)
    data = [make_shapes_image(rng, image_hw, n_objects=(2, 4)) for _ in range(n_images)]
    det = Detector(seg_model, conf=0.25, imgsz=max(image_hw), device="cpu", with_masks=True)
    models = resolve_models(str(seg_model), sam)
    seg = Segmenter(models.sam_path, models.sam_name, models.sam_family, device="cpu", min_score=0.0)
    plain = MaskFinisher(0.0)
    better = MaskFinisher(0.0, keep_detector_masks=True)
    ious: dict[str, list[float]] = {"sam_box": [], "sam_box_mask": [], "detector": [], "keep_better": []}
    kept_detector, n_dets = 0, 0
    t0 = time.perf_counter()
    for im, objs in data:
        d = det([im])[0]
        n_dets += len(d)
        if not len(d):
            continue
        x = seg.prepare(im)[None]
        seg.mask_prompts = False
        out_box = seg.infer(x, [image_hw], [d])[0]
        seg.mask_prompts = True
        out_mask = seg.infer(x, [image_hw], [d])[0]
        by_mode = {
            "sam_box": plain(out_box, d, image_hw),
            "sam_box_mask": plain(out_mask, d, image_hw),
            "keep_better": better(out_box, d, image_hw),
        }
        for k in range(len(d)):
            gt = max(objs, key=lambda o: _box_iou(d.xyxy_px[k], o.box_xyxy_px))
            if _box_iou(d.xyxy_px[k], gt.box_xyxy_px) < 0.5:
                continue
            ious["detector"].append(_iou(d.det_masks[k].to_full(), gt.mask))
            for mode, insts in by_mode.items():
                got = next((i.mask.to_full() for i in insts if i.det_index == k), np.zeros(image_hw, bool))
                ious[mode].append(_iou(got, gt.mask))
                if mode == "keep_better" and any(i.det_index == k and i.mask is d.det_masks[k] for i in insts):
                    kept_detector += 1
    n = len(ious["detector"])
    return {
        "images": n_images, "detections": n_dets, "matched": n, "keep_better_chose_detector": kept_detector,
        "seconds": round(time.perf_counter() - t0, 1),
        **{f"iou_{k}": round(float(np.mean(v)), 4) if v else float("nan") for k, v in ious.items()},
    }  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", action="store_true", help="train the -seg model first (into --workdir)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/detmasks"))
    ap.add_argument("--seg-model", type=Path, default=None, help="a -seg detector (default: --workdir/seg.pt)")
    ap.add_argument("--sam", default="sam2_t.pt", help="SAM weights (path or name in the weights folder)")
    ap.add_argument("--random-sam", action="store_true", help="build a random-weight sam2_t.pt in --workdir")
    ap.add_argument("--images", type=int, default=20)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seg_model = train_seg(args.workdir, args.epochs, args.n_train, args.imgsz) if args.train else None
    seg_model = seg_model or args.seg_model or args.workdir / "seg.pt"
    sam = args.sam
    if args.random_sam:
        from annotator.random_weights import write_random_sam

        sam = str(write_random_sam(args.workdir, "sam2_t", seed=0))
    res = measure(seg_model, sam, args.images, (args.imgsz, args.imgsz))
    note = " (RANDOM weights: the SAM columns are meaningless)" if args.random_sam else ""
    print(f"detector {seg_model}, SAM {sam}{note}")
    for k, v in res.items():
        print(f"  {k:28s} {v}")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
