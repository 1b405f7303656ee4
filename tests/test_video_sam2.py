"""The real SAM 2 tracker behind the video pipeline, through the command line (no stand-in).

Random SAM 2 weights make the masks noise, so this checks the plumbing end to end: the CLI finds a video beside
an image, the shapes detector prompts the tracker on keyframes, every labelled frame is written with its label
file, the tracks summary lists the tracks the tracker started, and COCO annotations carry their track ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from annotator.synthetic_video import write_shapes_video
from tests.test_incremental import write_images

pytestmark = pytest.mark.slow


def test_cli_labels_a_video_with_the_sam2_tracker(tmp_path, shapes_detector, sam2_t_ckpt):
    data = tmp_path / "clips"
    write_images(data, [3], sub=False)
    write_shapes_video(data / "walk.avi", n_frames=3, image_hw=(96, 128))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "annotator", "annotate", str(data), "--det-model", str(shapes_detector),
           "--sam-model", str(sam2_t_ckpt), "--device", "cpu", "--output-dir", str(out), "--format", "both",
           "--keyframe-interval", "2", "--sam-min-score", "0", "--quiet"]  # fmt: skip
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads((out / "run_report.json").read_text())
    (video,) = report["summary"]["videos"]
    assert video["rel_path"] == "walk.avi" and video["status"] in ("ok", "empty"), video
    assert video["frames_read"] == 3 and video["frames_written"] == 3
    frames = sorted(p.name for p in (out / "images" / "walk.avi").iterdir())
    assert frames == [f"{i:06d}.jpg" for i in range(3)]
    assert sorted(p.name for p in (out / "labels" / "walk.avi").iterdir()) == [f"{i:06d}.txt" for i in range(3)]
    tracks = json.loads((out / "tracks" / "walk.avi.json").read_text())
    ids = [t["track_id"] for t in tracks["tracks"]]
    assert ids == list(range(1, len(ids) + 1)) and video["tracks"] == len(ids)
    assert ids, "the shapes detector finds objects on the first keyframe, so the tracker starts tracks"
    coco = json.loads((out / "annotations.json").read_text())
    frame_images = {im["id"]: im for im in coco["images"] if im.get("video") == "walk.avi"}
    assert sorted(im["frame_index"] for im in frame_images.values()) == list(range(3))
    anns = [a for a in coco["annotations"] if a["image_id"] in frame_images]
    assert {a["track_id"] for a in anns} <= set(ids)
