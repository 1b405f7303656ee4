"""Our Segmenter on a CPU: images in parallel worker threads vs torch intra-op threads, timed alternately.

Modes (seconds per image, median and range over ``--repeats``; the load average is printed with each):

* ``batch x T threads``: the whole batch in one encoder call with T torch threads (``cpu_workers = 1``);
* ``W workers x 1 thread``: one image per task on W worker threads, one torch thread each (the default on a
  CPU, see :func:`annotator.segment.default_cpu_workers`).

    python benchmarks/segmenter_modes.py --images 4 --image-size 480x640 --objects 5 --repeats 3
"""

from __future__ import annotations

import argparse
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
    from ultralytics.models.sam import build

    from annotator.records import Detections
    from annotator.segment import Segmenter, usable_cores
    from annotator.synthetic import make_shapes_image
    from benchmarks.ground_truth import parse_hw

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sam-model", default=None, help="a sam2_t.pt checkpoint (default: random weights)")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--image-size", type=parse_hw, default=(480, 640))
    p.add_argument("--objects", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    ckpt = a.sam_model
    if ckpt is None:
        torch.manual_seed(0)
        ckpt = Path(tempfile.mkdtemp()) / "sam2_t.pt"
        torch.save(build.build_sam2_t(None).state_dict(), ckpt)
    seg = Segmenter(Path(ckpt), "sam2_t.pt", "sam2", device="cpu")
    rng = np.random.default_rng(0)
    images, dets = [], []
    for _ in range(a.images):
        im, objs = make_shapes_image(rng, a.image_size, n_objects=a.objects)
        images.append(im)
        n = len(objs)
        dets.append(Detections(np.array([o.box_xyxy_px for o in objs], np.float32).reshape(-1, 4),
                               np.array([o.class_id for o in objs], np.int64), np.ones(n, np.float32)))  # fmt: skip
    cores = usable_cores()
    modes = {f"batch x {t} thread{'s' if t > 1 else ''}": (1, t) for t in sorted({1, cores})}
    modes.update({f"{w} workers x 1 thread": (w, 1) for w in range(2, min(cores, a.images) + 1)})

    def run(mode):
        workers, threads = modes[mode]
        seg.cpu_workers, seg.threads.n = workers, threads
        seg.encoder_batch = len(images) if workers == 1 else 1  # the whole batch in one call / one image per task
        t0 = time.perf_counter()
        seg(images, dets)
        return (time.perf_counter() - t0) / len(images)

    for m in modes:  # warm-up
        run(m)
    times = {m: [] for m in modes}
    names = list(modes)
    for r in range(a.repeats):
        for m in names if r % 2 == 0 else names[::-1]:
            times[m].append(run(m))
            print(f"  repeat {r + 1} {m}: {times[m][-1]:.2f} s/image (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"Segmenter sam2_t, {a.images} images {a.image_size[0]}x{a.image_size[1]}, {a.objects} boxes each, "
          f"{cores} cores; seconds per image (median, min..max of {a.repeats}):")  # fmt: skip
    base = statistics.median(times[names[0]])
    for m in names:
        v = times[m]
        med = statistics.median(v)
        print(f"  {m:<22} {med:6.2f} s  ({min(v):.2f}..{max(v):.2f})  x{base / med:.2f}")


if __name__ == "__main__":
    main()
