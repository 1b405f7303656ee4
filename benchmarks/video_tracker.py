"""Speed and memory of the SAM 2 video tracker (:class:`annotator.video.sam2_tracker.SAM2Tracker`).

A synthetic video (discs moving over a textured background, ``--size``, ``--objects`` of them), the detector
replaced by the discs' exact boxes on every ``--keyframe-every``-th frame, a random-weight SAM 2-tiny (speed
does not depend on the weights). Prints seconds per frame, frames/s, peak and current RSS, and the stored memory
(entries per track, bytes) at each ``--report-at`` frame: flat after the first ``num_maskmem + 1`` frames.

``--stub`` replaces the two costly parts on a CPU, the image encoder (one cached frame encoding) and memory
attention (passes the frame's features through), so hundreds of frames fit in minutes: everything the tracker
stores, prunes and frees runs unchanged, which is what the memory figures are about (not the speed).

    python benchmarks/video_tracker.py --frames 10 --size 720x1280 --objects 3            # speed, real model
    python benchmarks/video_tracker.py --stub --frames 150 --report-at 50 100 150        # flat memory
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def rss_mib() -> tuple[float, float]:
    """``(current, peak)`` resident set size of this process in MiB (Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cur = peak
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
    except OSError:
        pass
    return cur, peak


def synthetic_video(n_frames: int, hw: tuple[int, int], n_objects: int, seed: int = 0):
    """Yield ``(frame_bgr (H, W, 3) uint8, boxes_xyxy_px (n, 4) float32)`` of discs bouncing in the frame."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = hw
    bg = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (15, 15), 0)
    r = rng.uniform(0.05, 0.12, n_objects) * min(h, w)
    pos = np.stack([rng.uniform(r, w - r), rng.uniform(r, h - r)], 1)
    vel = rng.uniform(-0.01, 0.01, (n_objects, 2)) * max(h, w)
    colours = rng.integers(0, 255, (n_objects, 3))
    for _ in range(n_frames):
        img = bg.copy()
        for (x, y), rad, c in zip(pos, r, colours):
            cv2.circle(img, (int(x), int(y)), int(rad), tuple(int(v) for v in c), -1)
        boxes = np.concatenate([pos - r[:, None], pos + r[:, None]], 1).astype(np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        yield img, boxes
        pos = pos + vel
        lo, hi = r[:, None], np.array([w, h])[None] - r[:, None]
        vel = np.where((pos < lo) | (pos > hi), -vel, vel)
        pos = pos.clip(lo, hi)


def stub_heavy_parts(tracker, hw: tuple[int, int]) -> None:
    """Cache one frame's encoding and pass memory attention through (see the module docstring)."""
    import torch

    with torch.inference_mode():
        cached = tracker._encode(np.full((*hw, 3), 90, np.uint8))

    class PassThrough(torch.nn.Module):
        def forward(self, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens=0):
            return curr[0]

    tracker._encode = lambda frame: dict(cached)
    tracker.model.memory_attention = PassThrough()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--size", default="720x1280", help="HxW of the frames")
    ap.add_argument("--objects", type=int, default=3)
    ap.add_argument("--keyframe-every", type=int, default=5)
    ap.add_argument("--report-at", type=int, nargs="*", default=[], help="frames after which to print memory")
    ap.add_argument("--stub", action="store_true", help="stub the encoder and memory attention (memory figures)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the tracker's default)")
    ap.add_argument("--weights", type=Path, default=None, help="a sam2*_.pt file (default: random SAM 2-tiny)")
    args = ap.parse_args(argv)

    import torch

    from annotator.records import Detections
    from annotator.video.sam2_tracker import SAM2Tracker

    h, w = (int(v) for v in args.size.lower().split("x"))
    weights = args.weights
    if weights is None:
        from ultralytics.models.sam import build

        torch.manual_seed(0)
        weights = Path(tempfile.mkdtemp(prefix="bench-sam2-")) / "sam2_t.pt"
        torch.save(build.build_sam2_t(None).state_dict(), weights)
    tracker = SAM2Tracker(weights, weights.name, device=args.device, max_missing=3, max_cond_frames=4)
    if args.threads:
        tracker.threads.n = args.threads
    if args.stub:
        stub_heavy_parts(tracker, (h, w))
    print(f"# SAM2Tracker {weights.name} on {tracker.device}, {torch.get_num_threads()} threads, "
          f"frames {h}x{w}, {args.objects} objects, keyframe every {args.keyframe_every}, stub={args.stub}")
    print(f"# memory bound per track: {tracker.memory_bound}")
    base_cur, base_peak = rss_mib()
    print(f"# RSS before the first frame: {base_cur:.0f} MiB (peak {base_peak:.0f} MiB)")
    times = []
    for k, (frame, boxes) in enumerate(synthetic_video(args.frames, (h, w), args.objects)):
        det = None
        if k % args.keyframe_every == 0:
            n = len(boxes)
            det = Detections(boxes, np.arange(n) % 3, np.full(n, 0.9, np.float32))
        t0 = time.perf_counter()
        objs = tracker.step(frame, k, det)
        times.append(time.perf_counter() - t0)
        if not args.stub or k + 1 in args.report_at:
            cur, peak = rss_mib()
            ent = tracker.memory_entries()
            per = sorted({(c.cond, c.non_cond) for c in ent.values()})
            print(f"frame {k + 1:4d}: {times[-1]:6.2f} s  objects {len(objs)}  tracks {len(ent)}  entries "
                  f"(cond, non_cond) {per}  stored {tracker.memory_nbytes() / 2**20:6.1f} MiB  "
                  f"RSS {cur:6.0f} MiB (peak {peak:6.0f})", flush=True)
    steady = times[1:] or times
    print(f"# {len(times)} frames in {sum(times):.1f} s: {len(times) / sum(times):.3f} frames/s overall, "
          f"{len(steady) / sum(steady):.3f} frames/s after the first; tracks {len(tracker.tracks())}")


if __name__ == "__main__":
    main()
