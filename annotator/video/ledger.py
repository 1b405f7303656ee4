"""The videos' part of the run ledger: one row per video (the unit of work), one row per labelled frame.

Same SQLite file as :class:`annotator.ledger.Ledger` (``.annotator/ledger.sqlite``), own tables, so the images'
table and its rules are untouched:

Table ``videos`` (key ``rel_path``, POSIX, relative to ``data``):

================  ==========================================================================================
size, mtime_ns    the file's version when it was processed (``sha256`` with ``hash_inputs``)
video_fp          digest of the images' ``model_fp``, ``output_fp`` and the video settings (``frame_stride``,
                  ``keyframe_interval``, tracker): any change re-labels the video
status            ``running`` (started, not finished: a killed run; redone), ``ok``, ``empty`` (no object),
                  ``truncated`` (stopped before its declared end; the frames read are labelled),
                  ``decode_error``, ``too_large``, ``too_small``; ``unsupported`` and ``failed`` are redone
reason            one line for a status other than ok / empty
frames_read       source frames read; ``frames_written``: labelled frames (JPEG + label file each)
tracks, instances tracks started; polygons written over all frames
image_h, image_w  frame size (upright); ``seconds`` processing time
tracks_json       ``tracker.tracks()`` as JSON (the final class of each track is its vote)
================  ==========================================================================================

Table ``video_frames`` (key ``video, frame_index``): ``result_json`` = the frame's instances
(:func:`annotator.ledger.instances_to_json`, with track ids) *as tracked*: the final class of each track is
applied when outputs are written.

A video's row is set to ``ok`` (or another final status) only after its frames and label files were moved into
place, so a killed run leaves it ``running`` and the next run redoes exactly that video.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from annotator.ledger import (FileStat, ImageSizeColumns, Ledger, add_missing_columns, dropped_to_json, instances_from_json,
                              instances_to_json, ledger_error)  # fmt: skip
from annotator.records import PolygonInstance

#: statuses a re-run redoes even when neither the file nor the settings changed
RETRIED_VIDEO_STATUSES = frozenset({"running", "failed", "unsupported"})
#: statuses whose frames and labels are outputs (in data.yaml, the COCO JSON)
LABELLED_VIDEO_STATUSES = frozenset({"ok", "empty", "truncated"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    rel_path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    video_fp TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    frames_read INTEGER NOT NULL DEFAULT 0,
    frames_written INTEGER NOT NULL DEFAULT 0,
    tracks INTEGER NOT NULL DEFAULT 0,
    instances INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0,
    image_h INTEGER,
    image_w INTEGER,
    tracks_json TEXT,
    updated_at REAL NOT NULL,
    dropped_json TEXT
);
CREATE TABLE IF NOT EXISTS video_frames (
    video TEXT NOT NULL,
    frame_index INTEGER NOT NULL,
    result_json TEXT NOT NULL,
    PRIMARY KEY (video, frame_index)
);
"""


@dataclass(frozen=True)
class VideoRow(ImageSizeColumns):
    """One ``videos`` row (see the module docstring)."""

    rel_path: str
    size: int
    mtime_ns: int
    sha256: str | None
    video_fp: str
    status: str
    reason: str
    frames_read: int
    frames_written: int
    tracks: int
    instances: int
    seconds: float
    image_h: int | None
    image_w: int | None
    tracks_json: str | None

    def final_classes(self) -> dict[int, int]:
        """``track_id -> class_id`` of the final vote."""
        return {int(t["track_id"]): int(t["class_id"]) for t in json.loads(self.tracks_json or "[]")}


class VideoLedger:
    """The video tables of a :class:`~annotator.ledger.Ledger` (shares its connection).

    Example:
        >>> import tempfile; from pathlib import Path
        >>> led = Ledger(Path(tempfile.mkdtemp())); vids = VideoLedger(led)
        >>> vids.begin("a.mp4", FileStat(10, 1), "fp"); vids.get("a.mp4").status
        'running'
        >>> led.close()
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.db = ledger.db
        try:
            self.db.executescript(_SCHEMA)
            add_missing_columns(self.db, {"videos": (("dropped_json", "TEXT"),)})  # a ledger of schema 1
        except sqlite3.DatabaseError as e:
            raise ledger_error(e, ledger.path) from None

    def get(self, rel_path: str) -> VideoRow | None:
        row = self.db.execute(
            "SELECT rel_path, size, mtime_ns, sha256, video_fp, status, reason, frames_read, frames_written, tracks,"
            " instances, seconds, image_h, image_w, tracks_json FROM videos WHERE rel_path = ?",
            (rel_path,),
        ).fetchone()
        return VideoRow(*row) if row else None

    def rel_paths(self) -> list[str]:
        return [p for (p,) in self.db.execute("SELECT rel_path FROM videos ORDER BY rel_path")]

    def is_current(self, rel_path: str, stat: FileStat | None, video_fp: str) -> bool:
        """True when the row was produced from this version of the file with these settings, and is final."""
        row = self.get(rel_path)
        if stat is None or row is None or row.video_fp != video_fp or row.status in RETRIED_VIDEO_STATUSES:
            return False
        if stat.sha256 is not None and row.sha256 is not None:
            return row.sha256 == stat.sha256
        return row.size == stat.size and row.mtime_ns == stat.mtime_ns

    def begin(self, rel_path: str, stat: FileStat, video_fp: str) -> None:
        """Mark the video ``running`` and forget its frames (from an older version or a killed run)."""
        self.ledger._write("DELETE FROM video_frames WHERE video = ?", (rel_path,))
        self.ledger._write(
            "INSERT OR REPLACE INTO videos (rel_path, size, mtime_ns, sha256, video_fp, status, updated_at)"
            " VALUES (?,?,?,?,?,'running',?)",
            (rel_path, stat.size, stat.mtime_ns, stat.sha256, video_fp, time.time()),
        )

    def add_frames(self, rel_path: str, frames: Sequence[tuple[int, Sequence[PolygonInstance]]]) -> None:
        """Store ``(frame_index, instances with track ids)`` of labelled frames (one transaction)."""
        self.add_frame_rows(rel_path, [(i, instances_to_json(insts)) for i, insts in frames])

    def add_frame_rows(self, rel_path: str, frames: Sequence[tuple[int, str]]) -> None:
        """Store ``(frame_index, instances JSON)`` rows (:func:`annotator.ledger.instances_to_json`), one transaction."""
        if not frames:
            return
        rows = [(rel_path, int(i), text) for i, text in frames]
        try:
            self.db.execute("BEGIN")  # one commit for the batch (the connection autocommits otherwise)
            try:
                self.db.executemany(
                    "INSERT OR REPLACE INTO video_frames (video, frame_index, result_json) VALUES (?,?,?)", rows
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise ledger_error(e, self.ledger.path) from None

    def frames(self, rel_path: str) -> Iterator[tuple[int, tuple[PolygonInstance, ...]]]:
        """``(frame_index, instances as tracked)`` in frame order, streamed (memory stays flat)."""
        cur = self.db.cursor()  # own cursor: the caller may write meanwhile
        for frame_index, text in cur.execute(
            "SELECT frame_index, result_json FROM video_frames WHERE video = ? ORDER BY frame_index", (rel_path,)
        ):
            yield int(frame_index), instances_from_json(text)

    def finish(
        self, rel_path: str, *, status: str, reason: str = "", frames_read: int = 0, frames_written: int = 0,
        tracks: int = 0, instances: int = 0, seconds: float = 0.0, image_hw: tuple[int, int] | None = None,
        tracks_json: str | None = None, dropped: dict[str, int] | None = None,
    ) -> None:  # fmt: skip
        """Record the video's final status (after its files are in place); ``dropped``: the tracked objects of its
        frames that gave no label row, by reason (``dropped_json``)."""
        h, w = image_hw if image_hw else (None, None)
        self.ledger._write(
            "UPDATE videos SET status=?, reason=?, frames_read=?, frames_written=?, tracks=?, instances=?, seconds=?,"
            " image_h=?, image_w=?, tracks_json=?, updated_at=?, dropped_json=? WHERE rel_path=?",
            (status, reason, frames_read, frames_written, tracks, instances, seconds, h, w, tracks_json, time.time(),
             dropped_to_json(dropped or {}), rel_path),
        )  # fmt: skip

    def forget(self, rel_paths: Sequence[str]) -> None:
        self.ledger._write("DELETE FROM video_frames WHERE video = ?", [(p,) for p in rel_paths])
        self.ledger._write("DELETE FROM videos WHERE rel_path = ?", [(p,) for p in rel_paths])
