"""In-process video engine: one video after another, frames streamed through one detector and one tracker.

A video is one unit of work (its tracker state is sequential); this engine loads the detector and the tracker
once and labels the due videos in order, yielding one :class:`~annotator.video.pipeline.VideoResult` each.
The Ray engine (:mod:`pipelines.ray_video`) hands one video to each actor call instead.

Example:
    >>> for result in local_video_engine(cfg, models, plan.due, ledger):  # doctest: +SKIP
    ...     print(result.rel_path, result.status, result.frames_written)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from annotator.video.jobs import VideoJob
from annotator.video.ledger import VideoLedger
from annotator.video.pipeline import (
    VideoLabeller,
    VideoResult,
    VideoUnsupported,
    check_video_support,
    label_and_commit,
)


def local_video_engine(
    cfg, models, jobs: list[VideoJob], ledger, *, tracker_factory: Callable | None = None,
    detector: Callable | None = None,
) -> Iterator[VideoResult]:  # fmt: skip
    """Label ``jobs`` in order. ``tracker_factory(cfg, models)`` / ``detector`` replace the real ones (tests).

    Settings that make videos impossible (not SAM 2 weights, ``prompts`` other than the detector)
    give every video status ``unsupported`` with the reason; nothing is raised.
    """
    if not jobs:
        return
    vledger = VideoLedger(ledger)
    try:
        check_video_support(cfg, models, custom_tracker=tracker_factory is not None)
        labeller = VideoLabeller.build(cfg, models, tracker_factory=tracker_factory, detector=detector)
    except VideoUnsupported as e:
        for job in jobs:
            yield refuse(vledger, job, "unsupported", str(e))
        return
    for job in jobs:
        yield label_and_commit(labeller, vledger, job.item, job.stat, job.video_fp)


def refuse(vledger: VideoLedger, job: VideoJob, status: str, reason: str) -> VideoResult:
    """Record ``job`` as not labelled (``status``, one-line ``reason``); a later run with other settings retries."""
    result = VideoResult(job.item.rel_path, status, reason)
    vledger.begin(job.item.rel_path, job.stat, job.video_fp)
    vledger.finish(**result.to_dict())
    return result
