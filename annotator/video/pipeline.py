"""Label one video: frames -> detector on keyframes -> tracker -> polygons -> frames, labels and ledger rows.

Two halves, so that the worker half can run anywhere that sees the output folder (this process, a Ray actor):

* :meth:`VideoLabeller.label` (worker, no ledger): everything goes to the video's staging folder::

    VideoStream.frames(frame_stride)          one (frame_index, frame_bgr) at a time, never all frames
      -> staging/images/<frame>.jpg           (the frame is on disk before the next one is decoded)
      -> detector([frame]) on keyframes       every keyframe_interval-th *labelled* frame, from the first
      -> tracker.step(frame, index, dets)     TrackedObject per live track (stable track_id)
      -> Polygonizer per object               PolygonInstance with track_id (identity kept, no re-pairing)
      -> staging/frames.tsv                   one line per frame: "<frame_index>\t<instances JSON>"
    at the end: tracker.tracks() -> each track's final class (its vote) -> staging/labels/<frame>.txt for
    every frame with that class (a track has one class throughout).

* :func:`commit_video` (driver, owns the ledger): frames.tsv -> ledger rows, staging moved into place,
  ``tracks/<video>.json``, then the video's row final.

The tracker comes from :func:`make_tracker` (SAM 2, imported lazily); tests and benchmarks pass a stand-in
implementing :class:`annotator.video.tracking.VideoTracker`.

Example:
    >>> labeller = VideoLabeller(cfg, detector, tracker, polygonizer)  # doctest: +SKIP
    >>> label_and_commit(labeller, video_ledger, item, FileStat.of(item.path), video_fp).status  # doctest: +SKIP
    'ok'
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from annotator.ledger import FileStat, instances_from_json, instances_to_json
from annotator.records import Detections, Instance, PolygonInstance, SourceItem
from annotator.video.decode import VideoDecodeError, VideoStream
from annotator.video.layout import VideoLayout
from annotator.video.ledger import LABELLED_VIDEO_STATUSES, VideoLedger
from annotator.video.tracking import TrackedObject, VideoTracker

JPEG_QUALITY = 95
_FRAMES_PER_COMMIT = 64

#: ``detector(list of (H, W, 3) uint8 BGR frames) -> one Detections per frame`` (:class:`annotator.detect.Detector`)
FrameDetector = Callable[[Sequence[np.ndarray]], list[Detections]]


@dataclass(frozen=True)
class VideoResult:
    """What labelling one video gave (also a row of ``RunSummary.videos``).

    Attributes:
        rel_path: the video's path relative to ``data``.
        status: see :mod:`annotator.video.ledger` (``ok``, ``empty``, ``truncated``, ``decode_error``...).
        reason: one line for a status other than ok / empty.
        frames_read: source frames read; frames_written: labelled frames written (JPEG + label each).
        tracks: tracks started; instances: polygons written over all frames.
        seconds: wall seconds spent on the video.
        dropped: tracked objects of its frames that gave no label row, by reason (``{"below_min_area_px": 4}``;
            see :class:`annotator.records.DropReason`).
    """

    rel_path: str
    status: str
    reason: str = ""
    frames_read: int = 0
    frames_written: int = 0
    tracks: int = 0
    instances: int = 0
    seconds: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def video_fingerprint(cfg, model_fp: str, output_fp: str, tracker_name: str) -> str:
    """Digest of everything that changes a video's outputs (see :mod:`annotator.video.ledger`)."""
    import hashlib

    doc = {"model_fp": model_fp, "output_fp": output_fp, "frame_stride": cfg.frame_stride,
           "keyframe_interval": cfg.keyframe_interval, "tracker": tracker_name,
           "track_match_iou": cfg.track_match_iou, "track_max_missing": cfg.track_max_missing,
           "track_max_unconfirmed": cfg.track_max_unconfirmed}  # fmt: skip
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def check_video_support(cfg, models, *, custom_tracker: bool = False) -> None:
    """Raise :class:`VideoUnsupported` (one line) when videos can not be labelled with these settings: prompts
    other than the detector, or (without a custom tracker) weights that are not SAM 2."""
    if cfg.prompts != "detector":
        raise VideoUnsupported(f"videos are prompted by the detector only (prompts is {cfg.prompts!r})")
    if custom_tracker:
        return
    if models.sam_family != "sam2":
        raise VideoUnsupported(f"videos need SAM 2 weights for tracking (sam_model is {models.sam_name}): use e.g. sam2_b.pt")


def make_tracker(cfg, models) -> VideoTracker:
    """The SAM 2 memory tracker for ``cfg`` (imported here, lazily: only runs with videos need it).

    Raises:
        VideoUnsupported: see :func:`check_video_support`.
    """
    check_video_support(cfg, models)
    from annotator.video.sam2_tracker import SAM2Tracker

    return SAM2Tracker(
        models.sam_path,
        models.sam_name,
        device=cfg.device,
        half=cfg.half,
        match_iou=cfg.track_match_iou,
        max_missing=cfg.track_max_missing,
        max_unconfirmed=cfg.track_max_unconfirmed,
        trust=cfg.trust_weights,
    )


def make_detector(cfg, models) -> FrameDetector:
    """The image detector (same settings as for images) for keyframes."""
    check_video_support(cfg, models, custom_tracker=True)
    from annotator.stages import Stages

    return Stages.build(cfg, models, parts=("detector",)).detector


class VideoUnsupported(Exception):
    """Videos can not be labelled with these settings; every video gets status ``unsupported`` and this line."""


def _remove_tree(path: Path) -> None:
    """Remove a folder we wrote (a link in its place is unlinked, never followed)."""
    from annotator.path_guard import check_write

    if path.is_symlink() or path.is_file():
        check_write(path, "remove")
        path.unlink()
    elif path.is_dir():
        check_write(path, "remove_tree")
        shutil.rmtree(path)


def remove_video_outputs(layout: VideoLayout, rel: str) -> None:
    """Remove a video's frames, labels and tracks file (before redoing it, or when it was deleted)."""
    _remove_tree(layout.frames_dir(rel))
    _remove_tree(layout.labels_dir(rel))
    tracks = layout.tracks_path(rel)
    if tracks.is_file() or tracks.is_symlink():
        from annotator.path_guard import check_write

        check_write(tracks, "remove")
        tracks.unlink()


def _bbox_xyxy(mask) -> np.ndarray:
    x, y, w, h = mask.bbox_xywh_px
    return np.array([x, y, x + w, y + h], np.float32)


@dataclass(frozen=True)
class LabelledVideo:
    """What the worker half hands to :func:`commit_video`: the result and what is staged for it.

    Attributes:
        result: the video's outcome (``seconds``: the worker's).
        staging: the staging folder (``images/``, ``labels/``, ``frames.tsv``); only the result when the
            status is not a labelled one.
        image_hw: frame size; tracks_json: ``tracker.tracks()`` as JSON (None when nothing was labelled).
    """

    result: VideoResult
    staging: Path
    image_hw: tuple[int, int] | None = None
    tracks_json: str | None = None


FRAMES_FILENAME = "frames.tsv"


class VideoLabeller:
    """Label videos one at a time with one detector, one tracker and one polygonizer (loaded once).

    Args:
        cfg: the run's settings (``frame_stride``, ``keyframe_interval``, ``max_pixels``, ``min_side_px``,
            ``multipart``, ``format``).
        detector: :data:`FrameDetector`; tracker: :class:`VideoTracker` (reset per video).
        polygonizer: :class:`annotator.polygons.Polygonizer`.
    """

    def __init__(self, cfg, detector: FrameDetector, tracker: VideoTracker, polygonizer) -> None:
        self.cfg = cfg
        self.detector = detector
        self.tracker = tracker
        self.polygonizer = polygonizer
        self._dropped: dict[str, int] = {}  # the current video's tracked objects without a polygon, by reason

    @classmethod
    def build(cls, cfg, models, *, tracker_factory=None, detector: FrameDetector | None = None) -> VideoLabeller:
        """Load the run's tracker (``tracker_factory(cfg, models)`` or SAM 2's) and detector (unless given).

        Raises:
            VideoUnsupported: see :func:`check_video_support`.
        """
        from annotator.stages import Stages

        tracker = (tracker_factory or make_tracker)(cfg, models)
        det = detector if detector is not None else make_detector(cfg, models)
        return cls(cfg, det, tracker, Stages.build_polygonizer(cfg))

    def label(self, item: SourceItem, staging: Path) -> LabelledVideo:
        """Label ``item`` into ``staging`` (emptied first). A bad video gives a status, never an exception
        (except an interrupt: the caller's video then stays ``running`` and the next run redoes it)."""
        t0 = time.perf_counter()
        _remove_tree(staging)
        try:
            labelled = self._label(item, staging)
        except VideoDecodeError as e:
            labelled = LabelledVideo(VideoResult(item.rel_path, "decode_error", str(e)), staging)
        except Exception as e:  # one bad video (or a tracker bug on it) must not stop the run
            from annotator.stages import one_line

            labelled = LabelledVideo(VideoResult(item.rel_path, "failed", one_line(e)), staging)
        return replace(labelled, result=replace(labelled.result, seconds=time.perf_counter() - t0))

    def _label(self, item: SourceItem, staging: Path) -> LabelledVideo:
        rel, cfg = item.rel_path, self.cfg
        from annotator.path_guard import check_write

        check_write(staging, "mkdir")  # everything of this video is written below it
        (staging / "images").mkdir(parents=True)
        self.tracker.reset()
        written = instances = 0
        image_hw: tuple[int, int] | None = None
        self._dropped: dict[str, int] = {}
        with VideoStream(item.path) as video, open(staging / FRAMES_FILENAME, "w", encoding="utf-8") as rows:
            for k, (frame_index, frame) in enumerate(video.frames(cfg.frame_stride)):
                h, w = frame.shape[:2]
                if h * w > cfg.max_pixels:
                    reason = f"frames are {w}x{h} = {h * w} pixels, over max_pixels={cfg.max_pixels}"
                    return LabelledVideo(VideoResult(rel, "too_large", reason, video.frames_read), staging)
                if min(h, w) < cfg.min_side_px:
                    reason = f"frames are {w}x{h}, a side under min_side_px={cfg.min_side_px}"
                    return LabelledVideo(VideoResult(rel, "too_small", reason, video.frames_read), staging)
                image_hw = (h, w)
                ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    raise RuntimeError(f"frame {frame_index}: JPEG encoding failed")
                (staging / "images" / f"{VideoLayout.frame_name(frame_index)}.jpg").write_bytes(jpg.tobytes())
                dets = self.detector([frame])[0] if k % cfg.keyframe_interval == 0 else None
                polys = self._polygons(self.tracker.step(frame, frame_index, dets))
                rows.write(f"{frame_index}\t{instances_to_json(polys)}\n")
                instances += len(polys)
                written += 1
            frames_read, truncated, declared = video.frames_read, video.truncated(), video.declared_frames
        if written == 0:
            reason = "no frame could be decoded (empty stream, damaged or unsupported codec)"
            return LabelledVideo(VideoResult(rel, "decode_error", reason, frames_read), staging)
        tracks = self.tracker.tracks()
        if cfg.writes_yolo:
            self._write_labels(staging, image_hw, {t.track_id: t.class_id for t in tracks})
        status, reason = ("ok" if instances else "empty"), ""
        if truncated:
            status = "truncated"
            reason = (f"decoding stopped after {frames_read} of {declared} declared frames (cut or damaged file); "
                      "the frames read are labelled")  # fmt: skip
        result = VideoResult(rel, status, reason, frames_read, written, len(tracks), instances, dropped=self._dropped)
        return LabelledVideo(result, staging, image_hw, json.dumps([asdict(t) for t in tracks]))

    def _polygons(self, objects: list[TrackedObject]) -> list[PolygonInstance]:
        """One polygonized instance per tracked object that gives a polygon, carrying its track id."""
        out = []
        for obj in objects:
            # det_index -1: a tracked mask has no position in a detector output (its identity is track_id)
            inst = Instance(obj.class_id, obj.det_conf, _bbox_xyxy(obj.mask), obj.sam_score, obj.mask, -1)
            for p in self.polygonizer([inst], self._dropped):  # zero or one, built from this object alone
                out.append(replace(p, track_id=int(obj.track_id)))
        return out

    def _write_labels(self, staging: Path, image_hw, final_class: dict[int, int]) -> None:
        from annotator.formats.yolo import instances_to_yolo_lines

        folder = staging / "labels"
        folder.mkdir(parents=True, exist_ok=True)
        for frame_index, text in staged_frames(staging):
            voted = [with_final_class(i, final_class) for i in instances_from_json(text)]
            lines = instances_to_yolo_lines(voted, image_hw, multipart=self.cfg.multipart)
            (folder / f"{VideoLayout.frame_name(frame_index)}.txt").write_text("".join(f"{ln}\n" for ln in lines))


def staged_frames(staging: Path):
    """``(frame_index, instances JSON)`` of ``staging/frames.tsv``, streamed."""
    with open(staging / FRAMES_FILENAME, encoding="utf-8") as f:
        for line in f:
            index, _, text = line.rstrip("\n").partition("\t")
            yield int(index), text


def commit_video(cfg, ledger: VideoLedger, labelled: LabelledVideo) -> VideoResult:
    """Driver half: record a labelled video in the ledger and move its staged outputs into place.

    The video's row (``running`` since :meth:`VideoLedger.begin`) becomes final only after its frames, labels
    and tracks file are in place; the staging folder is removed in every case.
    """
    t0 = time.perf_counter()
    r, layout = labelled.result, VideoLayout.of(cfg)
    try:
        if r.status in LABELLED_VIDEO_STATUSES:
            batch: list[tuple[int, str]] = []
            for row in staged_frames(labelled.staging):
                batch.append(row)
                if len(batch) >= _FRAMES_PER_COMMIT:
                    ledger.add_frame_rows(r.rel_path, batch)
                    batch = []
            ledger.add_frame_rows(r.rel_path, batch)
            _move_into_place(layout, r.rel_path, labelled.staging)
            _write_tracks_file(cfg, layout, r, labelled.image_hw, labelled.tracks_json)
        r = replace(r, seconds=r.seconds + time.perf_counter() - t0)
        ledger.finish(**r.to_dict(), image_hw=labelled.image_hw, tracks_json=labelled.tracks_json)
    finally:
        _remove_tree(labelled.staging)
    return r


def label_and_commit(labeller: VideoLabeller, ledger: VideoLedger, item: SourceItem, stat: FileStat, video_fp: str) -> VideoResult:
    """The whole video in this process: mark it ``running``, label it into staging, commit it."""
    layout = VideoLayout.of(labeller.cfg)
    ledger.begin(item.rel_path, stat, video_fp)
    remove_video_outputs(layout, item.rel_path)
    staging = layout.staging_dir(item.rel_path)
    try:
        labelled = labeller.label(item, staging)
    except BaseException:
        _remove_tree(staging)
        raise
    return commit_video(labeller.cfg, ledger, labelled)


def _move_into_place(layout: VideoLayout, rel: str, staging: Path) -> None:
    from annotator.io_atomic import ensure_real_dir
    from annotator.path_guard import check_write

    for kind, final in (("images", layout.frames_dir(rel)), ("labels", layout.labels_dir(rel))):
        if not (staging / kind).is_dir():
            continue
        ensure_real_dir(final.parent, layout.output_dir)
        _remove_tree(final)
        check_write(final, "replace")
        os.replace(staging / kind, final)


def _write_tracks_file(cfg, layout: VideoLayout, result: VideoResult, image_hw, tracks_json: str | None) -> None:
    from annotator.io_atomic import atomic_write_text, ensure_real_dir

    path = layout.tracks_path(result.rel_path)
    ensure_real_dir(path.parent, layout.output_dir)
    doc = {"video": result.rel_path, "status": result.status, "reason": result.reason, "image_hw": list(image_hw),
           "frame_stride": cfg.frame_stride, "keyframe_interval": cfg.keyframe_interval,
           "frames_read": result.frames_read, "frames_written": result.frames_written,
           "tracks": json.loads(tracks_json or "[]")}  # fmt: skip
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n", root=layout.output_dir)


def with_final_class(inst: PolygonInstance, final_class: dict[int, int]) -> PolygonInstance:
    """``inst`` with its track's final class (unchanged when the track has no vote)."""
    c = final_class.get(inst.track_id, inst.class_id) if inst.track_id is not None else inst.class_id
    return inst if c == inst.class_id else replace(inst, class_id=int(c))
