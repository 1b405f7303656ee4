"""The contract between the video tracker and the rest of the pipeline.

A tracker is fed the frames of one video in order (only the frames to label, every ``frame_stride``-th one),
with the detector's boxes on keyframes and ``None`` in between, and returns every live object's mask on
that frame. Track ids are stable within one video; :meth:`VideoTracker.reset` starts the next video.

Example:
    >>> tracker.reset()  # doctest: +SKIP
    >>> for frame_index, frame_bgr in frames:  # doctest: +SKIP
    ...     dets = detector([frame_bgr])[0] if is_keyframe(frame_index) else None
    ...     for obj in tracker.step(frame_bgr, frame_index, dets):
    ...         print(obj.track_id, obj.class_id, obj.mask.area_px)
    >>> tracker.tracks()  # the final summary, one per track (class by vote)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from annotator.records import Detections, MaskCrop


@dataclass(frozen=True)
class TrackedObject:
    """One tracked object on one frame.

    Attributes:
        track_id: stable id within its video, from 1, never reused in that video.
        class_id: the track's class so far (a vote over its matched detections, ties to the earliest).
        det_conf: the confidence of the detection that last refreshed the track, in ``[0, 1]``.
        sam_score: SAM 2's predicted IoU for this frame's mask, in ``[0, 1]``.
        mask: the mask in pixels of the frame (a tight crop, see :class:`MaskCrop`).
    """

    track_id: int
    class_id: int
    det_conf: float
    sam_score: float
    mask: MaskCrop


@dataclass(frozen=True)
class TrackSummary:
    """One track over its whole video.

    Attributes:
        track_id: as in :class:`TrackedObject`.
        class_id: the final vote over all matched detections.
        class_votes: ``{class_id: count}`` of the matched detections.
        first_frame / last_frame: frame indices (source numbering) where the track had a mask.
        frames: how many processed frames the track had a mask on.
        mean_det_conf / mean_sam_score: means over those.
        ended: why it ended: ``"lost"`` (no mask for ``max_missing`` keyframes), ``"unconfirmed"`` (a mask but no
            matching detection for ``max_unconfirmed`` keyframes, when set) or ``"video_end"``.
    """

    track_id: int
    class_id: int
    class_votes: dict[int, int]
    first_frame: int
    last_frame: int
    frames: int
    mean_det_conf: float
    mean_sam_score: float
    ended: str


class VideoTracker(Protocol):
    """What the video pipeline needs from a tracker (the SAM 2 one, or a ground-truth stand-in in tests)."""

    def reset(self) -> None:
        """Forget every track: the next :meth:`step` is the first frame of a new video."""

    def step(self, frame_bgr: np.ndarray, frame_index: int, detections: Detections | None) -> list[TrackedObject]:
        """Advance to ``frame_bgr`` (``(H, W, 3)`` uint8 BGR, source frame number ``frame_index``).

        ``detections`` (keyframes only, else None) refresh matching tracks and start new ones. Returns the
        objects with a non-empty mask on this frame, in ``track_id`` order.
        """

    def tracks(self) -> list[TrackSummary]:
        """Every track started since :meth:`reset`, in ``track_id`` order (final class votes)."""
