"""Track identities and their bookkeeping, apart from any model (numpy only): who is who, class votes, endings.

:class:`TrackBook` decides, on each keyframe, which detection refreshes which track, which detections start new
tracks and which tracks are lost; it also records every frame a track had a mask on, for the final
:class:`~annotator.video.tracking.TrackSummary`. The SAM 2 tracker feeds it SAM's masks; tests feed it exact masks.

Rules:

* ids start at 1 and grow; an id is never given again within one video (until :meth:`TrackBook.reset`);
* a detection matched to a live track (mask IoU ``>= match_iou``, :func:`~annotator.video.matching.greedy_match`)
  refreshes it: one class vote, its ``det_conf`` becomes the track's, its missing count goes back to 0;
* an unmatched detection starts a new track (its first vote);
* an unmatched track whose mask is empty (absent) on the keyframe counts one miss; after ``max_missing``
  consecutive missed keyframes it ends as ``"lost"`` and gets no more frames; an unmatched track that is
  still visible keeps living (its miss count back to 0: the detector just missed it), unless
  ``max_unconfirmed`` is set: after that many consecutive keyframes visible but matched by no detection it ends
  as ``"unconfirmed"`` (SAM 2 holding on to something the detector does not see: drift, a false start);
* the class is the vote's winner, ties to the class voted first.

Example:
    >>> book = TrackBook(match_iou=0.5, max_missing=2)
    >>> m = np.zeros((1, 8, 8), bool); m[0, :4, :4] = True
    >>> det = Detections(np.array([[0, 0, 4, 4]], np.float32), np.array([2]), np.array([0.9], np.float32))
    >>> book.keyframe({}, m, det).new
    ((1, 0),)
    >>> book.keyframe({1: m[0]}, m, det).matched  # the same object again: track 1 refreshed
    ((1, 0),)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from annotator.records import Detections
from annotator.video.matching import greedy_match, mask_iou_matrix
from annotator.video.tracking import TrackSummary


@dataclass(frozen=True)
class KeyframePlan:
    """What one keyframe did to the tracks.

    Attributes:
        matched: ``(track_id, det_index)`` pairs: the detection refreshes that live track.
        new: ``(track_id, det_index)``: a new track started from that detection (ids just given).
        lost: ids of the tracks that ended here (``max_missing`` consecutive keyframes without a mask, or
            ``max_unconfirmed`` visible but unconfirmed).
    """

    matched: tuple[tuple[int, int], ...] = ()
    new: tuple[tuple[int, int], ...] = ()
    lost: tuple[int, ...] = ()

    @property
    def prompted(self) -> dict[int, int]:
        """``{track_id: det_index}`` of every track a detection prompts on this frame (matched and new)."""
        return dict(self.matched + self.new)


@dataclass
class _Track:
    track_id: int
    class_votes: dict[int, int]  # insertion order = voting order (ties -> the earliest)
    det_conf: float
    missing: int = 0
    unconfirmed: int = 0
    ended: str | None = None
    first_frame: int = -1
    last_frame: int = -1
    frames: int = 0
    sum_det_conf: float = 0.0
    sum_sam_score: float = 0.0

    def vote(self, class_id: int, det_conf: float) -> None:
        self.class_votes[class_id] = self.class_votes.get(class_id, 0) + 1
        self.det_conf = det_conf
        self.missing = 0
        self.unconfirmed = 0

    @property
    def class_id(self) -> int:
        best = max(self.class_votes.values())
        return next(c for c, n in self.class_votes.items() if n == best)


@dataclass
class TrackBook:
    """The identities of one video's tracks (see the module docstring for the rules).

    Args:
        match_iou: a detection refreshes a track at mask IoU ``>=`` this (``(0, 1]``).
        max_missing: consecutive keyframes without a mask after which a track ends (``>= 1``).
        max_unconfirmed: consecutive keyframes with a mask but no matching detection after which a track ends
            ``"unconfirmed"`` (``>= 1``), or None: a visible track lives on (SAM 2's own behaviour).
    """

    match_iou: float = 0.5
    max_missing: int = 3
    max_unconfirmed: int | None = None
    _tracks: dict[int, _Track] = field(default_factory=dict, init=False, repr=False)
    _next_id: int = field(default=1, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.match_iou <= 1.0:
            raise ValueError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if int(self.max_missing) < 1:
            raise ValueError(f"max_missing must be >= 1, got {self.max_missing}")
        if self.max_unconfirmed is not None and int(self.max_unconfirmed) < 1:
            raise ValueError(f"max_unconfirmed must be >= 1 or None, got {self.max_unconfirmed}")

    def reset(self) -> None:
        """Forget every track; ids restart at 1 (a new video)."""
        self._tracks.clear()
        self._next_id = 1

    def live_ids(self) -> list[int]:
        """Ids of the tracks not ended, ascending."""
        return [t for t, tr in self._tracks.items() if tr.ended is None]

    def class_id(self, track_id: int) -> int:
        return self._tracks[track_id].class_id

    def det_conf(self, track_id: int) -> float:
        return self._tracks[track_id].det_conf

    def keyframe(
        self,
        track_masks: Mapping[int, np.ndarray],
        det_masks: np.ndarray,
        detections: Detections,
        present: Mapping[int, bool] | None = None,
    ) -> KeyframePlan:
        """Match ``detections`` to the live tracks and update identities (see the module's rules).

        Args:
            track_masks: ``{track_id: (h, w) bool}`` every live track's mask on this frame (any one resolution).
            det_masks: ``(D, h, w)`` bool, each detection's own mask on this frame, same resolution.
            detections: the ``D`` detections (class ids and confidences vote).
            present: ``{track_id: bool}`` whether the track is seen on this frame (default: its mask is not empty).

        Raises:
            ValueError: a live track without a mask, or masks and detections of different counts.
        """
        live = self.live_ids()
        if set(track_masks) != set(live):
            raise ValueError(f"track_masks must hold the live tracks {live}, got {sorted(track_masks)}")
        det_masks = np.asarray(det_masks, bool)
        if len(det_masks) != len(detections):
            raise ValueError(f"{len(det_masks)} detection masks for {len(detections)} detections")
        if live and len(detections):
            rows = np.stack([np.asarray(track_masks[t], bool) for t in live])
            pairs = greedy_match(mask_iou_matrix(rows, det_masks), self.match_iou)
        else:
            pairs = []
        matched = tuple((live[r], c) for r, c in pairs)
        used_tracks = {t for t, _ in matched}
        used_dets = {c for _, c in matched}
        for t, c in matched:
            self._tracks[t].vote(int(detections.class_ids[c]), float(detections.det_conf[c]))
        lost = []
        for t in live:
            if t in used_tracks:
                continue
            seen = bool(present[t]) if present is not None else bool(np.asarray(track_masks[t]).any())
            tr = self._tracks[t]
            tr.missing = 0 if seen else tr.missing + 1
            tr.unconfirmed = tr.unconfirmed + 1 if seen else 0
            if tr.missing >= self.max_missing:
                tr.ended = "lost"
                lost.append(t)
            elif self.max_unconfirmed is not None and tr.unconfirmed >= self.max_unconfirmed:
                tr.ended = "unconfirmed"
                lost.append(t)
        new = []
        for c in range(len(detections)):
            if c not in used_dets:
                new.append((self._start(int(detections.class_ids[c]), float(detections.det_conf[c])), c))
        return KeyframePlan(matched, tuple(new), tuple(lost))

    def observe(self, track_id: int, frame_index: int, sam_score: float) -> None:
        """Record that live track ``track_id`` has a (non-empty) mask on frame ``frame_index``."""
        tr = self._tracks[track_id]
        if tr.ended is not None:
            raise ValueError(f"track {track_id} ended ({tr.ended}); it can not be observed on frame {frame_index}")
        if tr.frames == 0:
            tr.first_frame = frame_index
        tr.last_frame = frame_index
        tr.frames += 1
        tr.sum_det_conf += tr.det_conf
        tr.sum_sam_score += float(sam_score)

    def summaries(self) -> list[TrackSummary]:
        """Every track since :meth:`reset`, by id; live ones end as ``"video_end"``. A track never observed with
        a mask has ``frames == 0``, ``first_frame == last_frame == -1`` and means 0."""
        out = []
        for tr in self._tracks.values():
            n = tr.frames
            out.append(
                TrackSummary(
                    track_id=tr.track_id,
                    class_id=tr.class_id,
                    class_votes=dict(tr.class_votes),
                    first_frame=tr.first_frame,
                    last_frame=tr.last_frame,
                    frames=n,
                    mean_det_conf=tr.sum_det_conf / n if n else 0.0,
                    mean_sam_score=tr.sum_sam_score / n if n else 0.0,
                    ended=tr.ended or "video_end",
                )
            )
        return out

    def _start(self, class_id: int, det_conf: float) -> int:
        tid = self._next_id
        self._next_id += 1
        self._tracks[tid] = _Track(tid, {class_id: 1}, det_conf)
        return tid
