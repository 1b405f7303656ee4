"""Where a video's outputs go: frames as JPEG images beside their YOLO labels, so the dataset trains as is.

For a video ``<rel>`` (its path relative to ``data``, e.g. ``clips/street.mp4``; the suffix stays, so
``street.mp4`` and ``street.mov`` never share a folder)::

    F/images/<rel>/<frame_index:06d>.jpg   the labelled frames (upright, JPEG quality 95)
    F/labels/<rel>/<frame_index:06d>.txt   their YOLO-seg labels (empty file: a frame with no object)
    O/tracks/<rel>.json                    the video's tracks (tracker.tracks()) and its status

``O`` is ``output_dir``; ``F`` is ``O`` in the dataset layout (``O/images`` is already the dataset's ``train``
folder) and ``O/video_frames`` in the sibling layout (``data`` = ``X/images``, ``O`` = ``X/labels``: the input
folder is not written to; the frames are added to ``labelled_images.list``, and Ultralytics finds each label by
replacing the last ``/images/`` of the frame's path with ``/labels/``). ``frame_index`` is the source frame
number (from 0), whatever ``frame_stride``.

A video being labelled is written under ``O/.annotator/video_staging/<key>/`` and moved into place at its end.

Example:
    >>> lay = VideoLayout(Path("/out"), sibling=False)
    >>> lay.frame_path("clips/a.mp4", 12).as_posix(), lay.label_path("clips/a.mp4", 12).as_posix()
    ('/out/images/clips/a.mp4/000012.jpg', '/out/labels/clips/a.mp4/000012.txt')
    >>> lay.coco_file_name("clips/a.mp4", 12), lay.tracks_path("clips/a.mp4").as_posix()
    ('clips/a.mp4/000012.jpg', '/out/tracks/clips/a.mp4.json')
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from annotator.ledger import LEDGER_DIRNAME

SIBLING_FRAMES_DIRNAME = "video_frames"
TRACKS_DIRNAME = "tracks"
STAGING_DIRNAME = "video_staging"


@dataclass(frozen=True)
class VideoLayout:
    """Paths of every video output under ``output_dir`` (see the module docstring)."""

    output_dir: Path
    sibling: bool

    @classmethod
    def of(cls, cfg) -> VideoLayout:
        return cls(Path(cfg.output_dir), bool(cfg.is_sibling_layout))

    @property
    def frames_root(self) -> Path:
        return self.output_dir / SIBLING_FRAMES_DIRNAME if self.sibling else self.output_dir

    def frames_dir(self, rel: str) -> Path:
        return self.frames_root / "images" / rel

    def labels_dir(self, rel: str) -> Path:
        return self.frames_root / "labels" / rel

    @staticmethod
    def frame_name(frame_index: int) -> str:
        return f"{int(frame_index):06d}"

    def frame_path(self, rel: str, frame_index: int) -> Path:
        return self.frames_dir(rel) / f"{self.frame_name(frame_index)}.jpg"

    def label_path(self, rel: str, frame_index: int) -> Path:
        return self.labels_dir(rel) / f"{self.frame_name(frame_index)}.txt"

    def coco_file_name(self, rel: str, frame_index: int) -> str:
        """The frame's ``file_name`` in the COCO JSON: relative to ``F/images`` (as images' are to ``images/``)."""
        return f"{rel}/{self.frame_name(frame_index)}.jpg"

    def tracks_path(self, rel: str) -> Path:
        return self.output_dir / TRACKS_DIRNAME / f"{rel}.json"

    @property
    def staging_root(self) -> Path:
        return self.output_dir / LEDGER_DIRNAME / STAGING_DIRNAME

    def staging_dir(self, rel: str) -> Path:
        return self.staging_root / hashlib.sha1(rel.encode()).hexdigest()[:16]
