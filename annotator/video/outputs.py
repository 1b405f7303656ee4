"""The labelled frames of finished videos, for the run-level files (``labelled_images.list``, the COCO JSON).

Read from the ledger (like the images' part of those files), in video order then frame order, streamed; each
instance carries its track's final class (the vote), as the frame's label file does.

Example:
    >>> for f in finished_frames(cfg, ledger, ["clips/a.mp4"]):  # doctest: +SKIP
    ...     coco.add_image(f.coco_file_name, f.image_hw, f.instances, {"video": f.video, "frame_index": f.frame_index})
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from annotator.records import PolygonInstance
from annotator.video.layout import VideoLayout
from annotator.video.ledger import LABELLED_VIDEO_STATUSES, VideoLedger
from annotator.video.pipeline import with_final_class


@dataclass(frozen=True)
class VideoFrameOutput:
    """One written frame of a finished video.

    Attributes:
        video: the video's path relative to ``data``; frame_index: source frame number (from 0).
        image_path: the frame's JPEG (absolute); label_path: its YOLO label file (absolute; written only when
            the run writes YOLO); coco_file_name: its COCO ``file_name``.
        image_hw: ``(H, W)`` of the frame; instances: with ``track_id`` and the track's final class.
    """

    video: str
    frame_index: int
    image_path: Path
    label_path: Path
    coco_file_name: str
    image_hw: tuple[int, int]
    instances: tuple[PolygonInstance, ...]


def finished_frames(cfg, ledger, videos: Sequence[str]) -> Iterator[VideoFrameOutput]:
    """Every written frame of the ``videos`` (rel paths, in order) whose status is final and labelled."""
    return frames_in(VideoLayout.of(cfg), ledger, videos)


def frames_in(layout: VideoLayout, ledger, videos: Sequence[str]) -> Iterator[VideoFrameOutput]:
    """:func:`finished_frames` with the layout given (a finished run read back without its config)."""
    vledger = VideoLedger(ledger)
    for rel in videos:
        row = vledger.get(rel)
        if row is None or row.status not in LABELLED_VIDEO_STATUSES or row.image_hw is None:
            continue
        final = row.final_classes()
        for frame_index, insts in vledger.frames(rel):
            yield VideoFrameOutput(
                video=rel,
                frame_index=frame_index,
                image_path=layout.frame_path(rel, frame_index).absolute(),
                label_path=layout.label_path(rel, frame_index).absolute(),
                coco_file_name=layout.coco_file_name(rel, frame_index),
                image_hw=row.image_hw,
                instances=tuple(with_final_class(i, final) for i in insts),
            )
