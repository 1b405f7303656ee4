"""Synthetic videos with exact ground truth: moving, occluding and appearing shapes, written with OpenCV.

Three objects (classes of :data:`annotator.synthetic.SHAPE_NAMES`, so the sample shapes detector knows them):

* track 1, a circle, swings left-right across the frame;
* track 2, a rectangle, swings right-left, painted after the circle: it occludes it where they cross (a fully
  hidden object is absent from that frame's ground truth);
* track 3, a triangle, appears at ``n_frames // 3`` and drifts down.

Positions are periodic, so a video of any length stays inside the frame. Ground truth is computed per frame on
demand (:meth:`SyntheticVideo.objects`), never stored for all frames. :class:`GroundTruthTracker` implements
:class:`annotator.video.tracking.VideoTracker` from it (the stand-in for SAM 2 in tests and benchmarks).

Example:
    >>> import tempfile
    >>> video = write_shapes_video(Path(tempfile.mkdtemp()) / "a.avi", n_frames=12)
    >>> [(o.track_id, o.class_id) for o in video.objects(0)], [o.track_id for o in video.objects(11)]
    ([(1, 0), (2, 1)], [1, 2, 3])
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from annotator.records import Detections, MaskCrop
from annotator.video.tracking import TrackedObject, TrackSummary

_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v"}
_PERIOD_FRAMES = 40


@dataclass(frozen=True)
class VideoObject:
    """One object's ground truth on one frame: ``mask`` is the visible ``(H, W)`` bool mask (non-empty)."""

    track_id: int
    class_id: int
    mask: np.ndarray


@dataclass(frozen=True)
class SyntheticVideo:
    """A written synthetic video and how to recompute its ground truth (see the module docstring).

    Attributes:
        path: the video file; image_hw: ``(H, W)``; n_frames: frames written; fps: frames per second.
    """

    path: Path
    image_hw: tuple[int, int] = (96, 128)
    n_frames: int = 30
    fps: float = 10.0

    @property
    def appear_frame(self) -> int:
        """The frame where track 3 appears."""
        return self.n_frames // 3

    def _full_masks(self, t: int) -> list[tuple[int, int, np.ndarray, tuple[int, int, int]]]:
        h, w = self.image_hw
        s = min(h, w)
        phase = math.sin(2 * math.pi * t / _PERIOD_FRAMES)
        out = []
        m = np.zeros((h, w), np.uint8)
        cv2.circle(m, (round(w / 2 + 0.3 * w * phase), round(0.42 * h)), round(0.14 * s), 1, -1)
        out.append((1, 0, m.astype(bool), (40, 40, 220)))
        m = np.zeros((h, w), np.uint8)
        cx, cy, hw_, hh = w / 2 - 0.3 * w * phase, 0.5 * h, 0.13 * s, 0.1 * s
        cv2.rectangle(m, (round(cx - hw_), round(cy - hh)), (round(cx + hw_), round(cy + hh)), 1, -1)
        out.append((2, 1, m.astype(bool), (220, 120, 30)))
        if t >= self.appear_frame:
            m = np.zeros((h, w), np.uint8)
            cx = 0.2 * w
            cy = 0.25 * h + 0.5 * h * ((t - self.appear_frame) % (3 * _PERIOD_FRAMES)) / (3 * _PERIOD_FRAMES)
            r = 0.12 * s
            pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
            cv2.fillPoly(m, [np.rint(pts).astype(np.int32)], 1)
            out.append((3, 2, m.astype(bool), (30, 200, 60)))
        return out

    def objects(self, frame_index: int) -> list[VideoObject]:
        """The visible objects on frame ``frame_index`` (later ones cover earlier ones), by track id."""
        full = self._full_masks(frame_index)
        out = []
        for k, (tid, cid, mask, _) in enumerate(full):
            visible = mask.copy()
            for _, _, later, _ in full[k + 1 :]:
                visible &= ~later
            if visible.any():
                out.append(VideoObject(tid, cid, visible))
        return out

    def frame(self, frame_index: int) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 BGR frame as painted (before the codec)."""
        h, w = self.image_hw
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.empty((h, w, 3), np.uint8)
        image[:] = (110 + 20 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.uint8)[:, :, None]
        for _, _, mask, colour in self._full_masks(frame_index):
            image[mask] = colour
        return image


def write_shapes_video(path: str | Path, n_frames: int = 30, image_hw: tuple[int, int] = (96, 128), fps: float = 10.0) -> SyntheticVideo:
    """Write the synthetic video to ``path`` (``.avi``: MJPG, ``.mp4/.mov/.mkv``: mp4v) and return its description."""
    path = Path(path)
    fourcc = _FOURCC.get(path.suffix.lower())
    if fourcc is None:
        raise ValueError(f"no codec for {path.suffix!r}: use one of {sorted(_FOURCC)}")
    video = SyntheticVideo(path, (int(image_hw[0]), int(image_hw[1])), int(n_frames), float(fps))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (video.image_hw[1], video.image_hw[0]))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with {fourcc}")
    try:
        for t in range(video.n_frames):
            writer.write(video.frame(t))
    finally:
        writer.release()
    return video


@dataclass
class _TrackStats:
    votes: Counter = field(default_factory=Counter)
    first: int = -1
    last: int = -1
    frames: int = 0


class GroundTruthTracker:
    """A :class:`~annotator.video.tracking.VideoTracker` that returns the synthetic video's exact masks and ids.

    Args:
        video: the video it tracks (it ignores the pixels and the detections).
        wrong_class_frames: track 1 reports a wrong class on its first n frames (the final vote is still right),
            to check that outputs use each track's final class.

    ``step_calls`` and ``detections_seen`` (keyframes) are counted for tests.
    """

    tracker_name = "ground-truth"

    def __init__(self, video: SyntheticVideo, *, wrong_class_frames: int = 0) -> None:
        self.video = video
        self.wrong_class_frames = wrong_class_frames
        self.reset()

    def reset(self) -> None:
        self._stats: dict[int, _TrackStats] = {}
        self._classes: dict[int, int] = {}
        self.step_calls = 0
        self.detections_seen = 0

    def step(self, frame_bgr: np.ndarray, frame_index: int, detections: Detections | None) -> list[TrackedObject]:
        self.step_calls += 1
        self.detections_seen += detections is not None
        out = []
        for obj in self.video.objects(frame_index):
            st = self._stats.setdefault(obj.track_id, _TrackStats(first=frame_index))
            wrong = obj.track_id == 1 and st.frames < self.wrong_class_frames
            cls = (obj.class_id + 1) % 3 if wrong else obj.class_id
            st.votes[cls] += 1
            st.last, st.frames = frame_index, st.frames + 1
            so_far = max(st.votes, key=lambda c: st.votes[c])
            out.append(TrackedObject(obj.track_id, so_far, 0.9, 0.95, MaskCrop.from_full(obj.mask)))
        return out

    def tracks(self) -> list[TrackSummary]:
        return [
            TrackSummary(tid, max(st.votes, key=lambda c: st.votes[c]), dict(st.votes), st.first, st.last, st.frames,
                         0.9, 0.95, "video_end")  # fmt: skip
            for tid, st in sorted(self._stats.items())
        ]


class CountingDetector:
    """A frame detector stand-in: no boxes, but counts its calls (the keyframes)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frames) -> list[Detections]:
        self.calls += 1
        return [Detections.empty() for _ in frames]
