"""Cost of turning SAM's 256x256 mask logits into full-resolution masks, per image.

Compares, on realistic logits (smooth logits made from the ground-truth masks of synthetic shapes, placed in
the letterboxed 256x256 frame as SAM's decoder does), for several image sizes:

* ``full``: Ultralytics' path -- ``ops.scale_masks`` of every whole mask to the image, threshold (what
  its SAM predictor's postprocess does), then our :class:`MaskCrop` of each;
* ``crop``: :func:`annotator.mask_upsample.upsample_crops` (only the window where a mask can be positive):
  two numpy gathers per window, float32 (``crop f32``, what the pipeline uses) or float64 (``crop f64``);
* ``crop matmul f64``: the first version of the crop path (dense ``(h, 256) @ (256, 256) @ (256, w)`` float64
  interpolation matrices per window), kept here as the "before" of docs/performance.md.

Also checks that both give the same pixels (up to float rounding of the bilinear weights).

    python benchmarks/upsample_masks.py --sizes 480x640 720x1280 1080x1920 --objects 5 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def realistic_logits(masks: np.ndarray, image_hw: tuple[int, int]):
    """``(N, 256, 256)`` float32 logits positive on each mask, as SAM's decoder outputs them (ground_truth.py)."""
    import torch

    from benchmarks.ground_truth import realistic_logits as logits_np

    return torch.from_numpy(logits_np(masks, image_hw))


def upsample_crops_matmul_f64(logits, image_hw, threshold: float = 0.0):
    """The first crop implementation (float64 interpolation matrices), for before/after measurements."""
    import torch

    from annotator.records import MaskCrop
    from annotator.mask_upsample import LOWRES_PX as _LOWRES_PX, lowres_gain

    def interp_matrix(out_len, in_len, gain, limit):
        y = torch.arange(out_len, dtype=torch.float64)
        src = ((y + 0.5) * gain - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=limit)
        i1 = (i0 + 1).clamp(max=limit)
        frac = (src - i0.double()).clamp(0, 1)
        w = torch.zeros(out_len, in_len, dtype=torch.float64)
        w[torch.arange(out_len), i0] += 1 - frac
        w[torch.arange(out_len), i1] += frac
        return w, i0, i1

    h, w = image_hw
    gain_h, gain_w = lowres_gain(image_hw)
    bottom, right = max(round(h * gain_h), 1), max(round(w * gain_w), 1)
    exact = abs(h * gain_h - bottom) + abs(w * gain_w - right) <= 1e-3
    lim_h, lim_w = (bottom - 1, right - 1) if exact else (_LOWRES_PX - 1, _LOWRES_PX - 1)
    wy, iy0, iy1 = interp_matrix(h, _LOWRES_PX, gain_h, lim_h)
    wx, ix0, ix1 = interp_matrix(w, _LOWRES_PX, gain_w, lim_w)
    lg = logits.detach().double().cpu()
    pos = lg > threshold
    crops = []
    for n in range(lg.shape[0]):
        rowpos, colpos = pos[n].any(dim=1), pos[n].any(dim=0)
        rows = torch.nonzero(rowpos[iy0] | rowpos[iy1]).flatten()
        cols = torch.nonzero(colpos[ix0] | colpos[ix1]).flatten()
        if rows.numel() == 0 or cols.numel() == 0:
            crops.append(MaskCrop(np.zeros((0, 0), bool), (0, 0), (h, w)))
            continue
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        win = (wy[y0:y1] @ lg[n] @ wx[x0:x1].T) > threshold
        crop = MaskCrop.from_full(win.numpy())
        if crop.area_px:
            crop = MaskCrop(crop.bitmap, (crop.origin_xy[0] + x0, crop.origin_xy[1] + y0), (h, w))
        crops.append(crop)
    return crops


def main(argv=None) -> None:
    import torch

    from annotator.mask_upsample import _upsample_crops, upsample_crops, upsample_full

    methods = {
        "full (ultralytics)": upsample_full,
        "crop matmul f64": upsample_crops_matmul_f64,
        "crop f64": lambda lg, hw: _upsample_crops(lg, hw, 0.0, torch.float64),
        "crop f32": upsample_crops,
    }
    from annotator.synthetic import make_shapes_image
    from benchmarks.ground_truth import parse_hw

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=parse_hw, nargs="+", default=[(480, 640), (720, 1280), (1080, 1920)])
    p.add_argument("--objects", type=int, default=5)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch threads {torch.get_num_threads()}; seconds per image (median of {a.repeats}), {a.objects} objects")
    print(f"{'size':>10} " + " ".join(f"{k:>18}" for k in methods) + "   pixels differing from full (f32 crop)")
    for hw in a.sizes:
        rng = np.random.default_rng(0)
        cases = []
        for _ in range(a.images):
            _, objs = make_shapes_image(rng, hw, n_objects=a.objects)
            cases.append(realistic_logits(np.stack([o.mask for o in objs]), hw))
        diff = 0
        for lg in cases:
            full, crop = upsample_full(lg, hw), upsample_crops(lg, hw)
            diff += sum(int((f.to_full() != c.to_full()).sum()) for f, c in zip(full, crop))
        times: dict[str, list[float]] = {k: [] for k in methods}
        names = list(methods)
        for r in range(a.repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                for lg in cases:
                    methods[name](lg, hw)
                times[name].append((time.perf_counter() - t0) / len(cases))
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = " ".join(f"{med[k] * 1e3:>15.1f} ms" for k in names)
        print(f"{hw[0]}x{hw[1]:<5} {cells}   {diff}")


if __name__ == "__main__":
    main()
