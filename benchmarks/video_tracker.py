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
    python benchmarks/video_tracker.py --versus-ultralytics --frames 6 --size 360x640 --objects 2

``--versus-ultralytics`` times our tracker against Ultralytics' ``SAM2VideoPredictor`` in one process, on the
same MJPG .avi (written with OpenCV, decoded inside each timed step: OpenCV for ours, Ultralytics' own loader for
theirs), the same checkpoint and the same boxes on frame 0 only (no later keyframes: the case Ultralytics
supports, so our tracks never end, even when a random model's masks come out empty; Ultralytics encodes frame 0
once per prompt plus once to consolidate, which is part of its cost). Both first run a ``--warmup-frames``
clip untimed, then step the timed clip alternately, one frame each, with the same torch thread count
(``--threads``, default the count Ultralytics' ``select_device`` picks: ``min(8, cpus - 1)``, 1 on a 2-core
machine). Model loading is not timed.
SAM 2 letterboxes every frame to 1024 px, so ``--size`` barely changes the speed.
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


def write_avi(path: Path, n_frames: int, hw: tuple[int, int], n_objects: int, seed: int = 0) -> np.ndarray:
    """Write the synthetic video as an MJPG .avi; return frame 0's boxes ``(n, 4)`` in pixels."""
    import cv2

    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (hw[1], hw[0]))
    first = None
    for frame, boxes in synthetic_video(n_frames, hw, n_objects, seed):
        vw.write(frame)
        first = boxes if first is None else first
    vw.release()
    return first


def versus_ultralytics(args, weights: Path, hw: tuple[int, int]) -> None:
    """Time :class:`SAM2Tracker` and Ultralytics' ``SAM2VideoPredictor`` alternately on one video (module doc)."""
    import cv2
    import torch
    from ultralytics.models.sam import SAM2VideoPredictor

    from annotator.records import Detections
    from annotator.video.sam2_tracker import SAM2Tracker

    work = Path(tempfile.mkdtemp(prefix="bench-sam2-video-"))
    clips = {}
    for name, n in (("warmup", args.warmup_frames), ("timed", args.frames)):
        if n > 0:
            clips[name] = (work / f"{name}.avi", n)
            boxes = write_avi(clips[name][0], n, hw, args.objects, seed=0 if name == "timed" else 1)
            clips[name] += (boxes,)

    pred = SAM2VideoPredictor(overrides=dict(model=str(weights), imgsz=1024, device=args.device, save=False,
                                             verbose=False, conf=0.25))
    pred.setup_model(None, verbose=False)  # select_device (sets torch threads) now, not inside the timed loop
    tracker = SAM2Tracker(weights, weights.name, device=args.device, max_missing=3, max_cond_frames=4)
    if args.threads:
        tracker.threads.n = args.threads
    n_threads = tracker.threads.n

    def ours(path: Path, boxes: np.ndarray):
        """Generator: decode and step one frame per ``next``; frame 0 carries the boxes."""
        tracker.reset()
        det = Detections(boxes, np.arange(len(boxes)) % 3, np.full(len(boxes), 0.9, np.float32))
        cap = cv2.VideoCapture(str(path))
        k = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield tracker.step(frame, k, det if k == 0 else None)
                k += 1
        finally:
            cap.release()

    def theirs(path: Path, boxes: np.ndarray):
        return pred(source=str(path), bboxes=boxes.tolist(), stream=True)

    def timed_step(gen, n_objects_seen: list) -> float | None:
        torch.set_num_threads(n_threads)  # ours re-applies it too; Ultralytics keeps what it finds
        t0 = time.perf_counter()
        try:
            out = next(gen)
        except StopIteration:
            return None
        dt = time.perf_counter() - t0
        n_objects_seen.append(len(out) if isinstance(out, list) else (0 if out.masks is None else len(out.masks)))
        assert torch.get_num_threads() == n_threads, "a model changed the torch thread count"
        return dt

    print(f"# SAM2Tracker vs Ultralytics SAM2VideoPredictor, {weights.name} on {tracker.device}, {n_threads} torch "
          f"threads for both, frames {hw[0]}x{hw[1]} MJPG .avi, {args.objects} objects boxed on frame 0 only, "
          f"{args.warmup_frames} warm-up + {args.frames} timed frames, alternating frame by frame", flush=True)
    times: dict[str, list[float]] = {"ours": [], "ultralytics": []}
    seen: dict[str, list[int]] = {"ours": [], "ultralytics": []}
    for name, (path, n, boxes) in clips.items():
        gens = {"ours": ours(path, boxes), "ultralytics": theirs(path, boxes)}
        for k in range(n):
            for who, gen in gens.items():
                dt = timed_step(gen, seen[who] if name == "timed" else [])
                if dt is None:
                    raise RuntimeError(f"{who} stopped before frame {k} of the {name} clip")
                if name == "timed":
                    times[who].append(dt)
            if name == "timed":
                cur, peak = rss_mib()
                print(f"frame {k + 1:3d}: ours {times['ours'][-1]:6.2f} s ({seen['ours'][-1]} objects, "
                      f"{len(tracker.memory_entries())} tracks in memory)   "
                      f"ultralytics {times['ultralytics'][-1]:6.2f} s ({seen['ultralytics'][-1]} objects)   "
                      f"RSS {cur:5.0f} MiB (peak {peak:5.0f})", flush=True)
            else:
                print(f"# warm-up frame {k + 1} done", flush=True)
        for gen in gens.values():
            for _ in gen:  # let each generator finish (releases the video)
                pass
    if not times["ours"]:
        return
    fps = {who: len(t) / sum(t) for who, t in times.items()}
    steady = {who: (len(t) - 1) / sum(t[1:]) if len(t) > 1 else float("nan") for who, t in times.items()}
    for who in times:
        print(f"# {who:11s}: {len(times[who])} frames in {sum(times[who]):6.1f} s = {fps[who]:.4f} frames/s "
              f"({steady[who]:.4f} after frame 0; frame 0 {times[who][0]:.2f} s)")
    print(f"# ours/ultralytics frames/s: {fps['ours'] / fps['ultralytics']:.2f}x overall, "
          f"{steady['ours'] / steady['ultralytics']:.2f}x after frame 0")
    cur, peak = rss_mib()
    print(f"# RSS {cur:.0f} MiB, peak {peak:.0f} MiB (one process holding both models: not split by tool)")


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
    ap.add_argument("--versus-ultralytics", action="store_true",
                    help="time ours and Ultralytics' SAM2VideoPredictor alternately, boxes on frame 0 only")
    ap.add_argument("--warmup-frames", type=int, default=2, help="untimed frames per tool (--versus-ultralytics)")
    args = ap.parse_args(argv)
    if args.versus_ultralytics and args.stub:
        ap.error("--versus-ultralytics times the real model: drop --stub")

    import torch

    from annotator.records import Detections
    from annotator.video.sam2_tracker import SAM2Tracker

    h, w = (int(v) for v in args.size.lower().split("x"))
    weights = args.weights
    if weights is None:
        from annotator.random_weights import write_random_sam

        weights = write_random_sam(Path(tempfile.mkdtemp(prefix="bench-sam2-")), "sam2_t", seed=0)
    if args.versus_ultralytics:
        versus_ultralytics(args, weights, (h, w))
        return
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
