"""Plan the videos of a run against the ledger: one video = one job; finished videos are skipped.

A video is due when it is new, its file changed (size + mtime, or SHA-256 with ``hash_inputs``), its settings
changed (:func:`annotator.video.pipeline.video_fingerprint`), or its row is ``running`` (a killed run) or
``failed``. Videos gone from ``data`` lose their outputs and rows (unless ``keep_deleted``).

Example:
    >>> plan = plan_videos(cfg, scan.videos, ledger, model_fp, output_fp, "sam2")  # doctest: +SKIP
    >>> [j.item.rel_path for j in plan.due], plan.unchanged  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

from annotator.ledger import FileStat, Ledger, stat_items
from annotator.records import SourceItem
from annotator.video.layout import VideoLayout
from annotator.video.ledger import VideoLedger
from annotator.video.pipeline import remove_video_outputs, video_fingerprint


@dataclass(frozen=True)
class VideoJob:
    """One video to label: the file, its version and the fingerprint its row will carry."""

    item: SourceItem
    stat: FileStat
    video_fp: str


@dataclass
class VideoPlan:
    """Attributes: due (jobs, in rel_path order), unchanged (finished videos skipped), vanished (rel_paths of
    videos that disappeared while scanning), removed (videos deleted since the last run, outputs removed)."""

    due: list[VideoJob] = field(default_factory=list)
    unchanged: int = 0
    vanished: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def plan_videos(cfg, videos: list[SourceItem], ledger: Ledger, model_fp: str, output_fp: str, tracker_name: str) -> VideoPlan:
    vledger = VideoLedger(ledger)
    fp = video_fingerprint(cfg, model_fp, output_fp, tracker_name)
    stats = stat_items(videos, with_hash=cfg.hash_inputs)
    plan = VideoPlan()
    for it in videos:
        st = stats[it.rel_path]
        if st is None:
            plan.vanished.append(it.rel_path)
        elif vledger.is_current(it.rel_path, st, fp):
            plan.unchanged += 1
        else:
            plan.due.append(VideoJob(it, st, fp))
    current = {it.rel_path for it in videos}
    gone = [p for p in vledger.rel_paths() if p not in current]
    if gone and not cfg.keep_deleted:
        layout = VideoLayout.of(cfg)
        for rel in gone:
            remove_video_outputs(layout, rel)
        vledger.forget(gone)
        plan.removed = gone
    return plan
