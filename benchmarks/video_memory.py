"""Peak memory of the video path: flat in the number of frames (frames are streamed, polygons go to the ledger).

Labels a synthetic video of N small frames with the ground-truth stand-in tracker and a counting detector
(no model: what is measured is the streaming path: decode -> JPEG -> tracker -> polygons -> ledger -> labels),
each N in a fresh process, and prints the peak RSS of each process and of the labelling alone.

Usage::

    python benchmarks/video_memory.py                 # 300 and 3000 frames of 96x128
    python benchmarks/video_memory.py --frames 300 3000 10000 --hw 96 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(n_frames: int, hw: tuple[int, int]) -> dict:
    """Label one synthetic video of ``n_frames`` in this process; peak RSS before and after labelling."""
    sys.path.insert(0, str(REPO))
    from annotator.config import make_config
    from annotator.ledger import FileStat, Ledger
    from annotator.records import SourceItem
    from annotator.stages import Stages
    from annotator.synthetic_video import CountingDetector, GroundTruthTracker, write_shapes_video
    from annotator.video.ledger import VideoLedger
    from annotator.video.pipeline import VideoLabeller, label_and_commit

    tmp = Path(tempfile.mkdtemp(prefix="video_memory_"))
    video = write_shapes_video(tmp / "data" / "v.avi", n_frames=n_frames, image_hw=hw)
    cfg = make_config(data=tmp / "data", output_dir=tmp / "out", det_model="x.pt", sam_model="sam2_t.pt", format="both")
    ledger = Ledger(tmp / "out")
    rss_before = _rss_mib()
    labeller = VideoLabeller(cfg, CountingDetector(), GroundTruthTracker(video), Stages.build_polygonizer(cfg))
    t0 = time.perf_counter()
    result = label_and_commit(labeller, VideoLedger(ledger), SourceItem(video.path, "v.avi"), FileStat.of(video.path), "fp")
    seconds = time.perf_counter() - t0
    ledger.close()
    return {"frames": n_frames, "status": result.status, "frames_written": result.frames_written,
            "instances": result.instances, "peak_rss_mib_before": round(rss_before, 1),
            "peak_rss_mib": round(_rss_mib(), 1), "seconds": round(seconds, 2),
            "frames_per_s": round(result.frames_written / seconds, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[300, 3000])
    ap.add_argument("--hw", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(one(a.child, tuple(a.hw))))
        return
    rows = []
    for n in a.frames:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--hw", *map(str, a.hw)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        growth = (hi["peak_rss_mib"] - hi["peak_rss_mib_before"]) - (lo["peak_rss_mib"] - lo["peak_rss_mib_before"])
        print(f"{lo['frames']} -> {hi['frames']} frames: peak RSS {lo['peak_rss_mib']} -> {hi['peak_rss_mib']} MiB "
              f"(labelling's own growth differs by {growth:+.1f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
