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
    make_detector,
    make_tracker,
)


def local_video_engine(
    cfg, models, jobs: list[VideoJob], ledger, *, tracker_factory: Callable | None = None,
    detector: Callable | None = None,
) -> Iterator[VideoResult]:  # fmt: skip
    """Label ``jobs`` in order. ``tracker_factory(cfg, models)`` / ``detector`` replace the real ones (tests).

    Settings that make videos impossible (not SAM 2 weights, no tracker in this build, ``prompts: boxes``)
    give every video status ``unsupported`` with the reason; nothing is raised.
    """
    if not jobs:
        return
    from annotator.stages import Stages

    vledger = VideoLedger(ledger)
    try:
        check_video_support(cfg, models, custom_tracker=tracker_factory is not None)
        tracker = (tracker_factory or make_tracker)(cfg, models)
        det = detector if detector is not None else make_detector(cfg, models)
    except VideoUnsupported as e:
        for job in jobs:
            yield refuse(vledger, job, "unsupported", str(e))
        return
    labeller = VideoLabeller(cfg, det, tracker, Stages.build_polygonizer(cfg))
    for job in jobs:
        yield label_and_commit(labeller, vledger, job.item, job.stat, job.video_fp)


def refuse(vledger: VideoLedger, job: VideoJob, status: str, reason: str) -> VideoResult:
    """Record ``job`` as not labelled (``status``, one-line ``reason``); a later run with other settings retries."""
    vledger.begin(job.item.rel_path, job.stat, job.video_fp)
    vledger.finish(job.item.rel_path, status=status, reason=reason)
    return VideoResult(job.item.rel_path, status, reason)
