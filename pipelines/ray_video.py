"""Ray video engine: one video per actor call; the driver keeps the ledger and commits each video.

::

    driver: every due video marked running (old outputs removed)
      -> VideoActor.label(item, staging) [actor pool]  detector + tracker loaded once per actor; frames, labels
                                                        and frames.tsv written to the video's staging folder
      -> driver, as each video completes: commit_video (ledger rows, staging moved into place, row final)

Videos are not split (a tracker's memory is sequential within a video): parallelism is across videos, one per
actor, ``min(videos, ray.actors max)`` actors, each with ``ray.gpus_per_actor`` GPUs (1 by default when the
cluster has GPUs) and ``ray.cpus_per_actor`` CPUs. The actors write under ``output_dir/.annotator/`` and read
the videos, so on a multi-node cluster both ``data`` and ``output_dir`` must be on a shared file system.

Failures: a bad video gives its status inside the actor, as in the local engine; an actor that dies is
restarted by Ray (models reloaded) and its video retried ``ray.max_task_retries`` times, then recorded
``failed`` (retried by the next run). An interrupt leaves the unfinished videos ``running``: the next run
redoes exactly those.

Example:
    >>> for result in ray_video_engine(cfg, models, plan.due, ledger):  # doctest: +SKIP
    ...     print(result.rel_path, result.status)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from annotator.records import SourceItem
from annotator.video.jobs import VideoJob
from annotator.video.layout import VideoLayout
from annotator.video.ledger import VideoLedger
from annotator.video.pipeline import (
    LabelledVideo,
    VideoLabeller,
    VideoResult,
    VideoUnsupported,
    check_video_support,
    commit_video,
    remove_video_outputs,
)
from pipelines.local_video import refuse


class VideoActor:
    """Holds one detector and one tracker (loaded once); labels one video per :meth:`label` call."""

    def __init__(self, cfg, models, tracker_factory: Callable | None, detector: Callable | None) -> None:
        self.labeller = VideoLabeller.build(cfg, models, tracker_factory=tracker_factory, detector=detector)

    def label(self, item: SourceItem, staging) -> LabelledVideo:
        return self.labeller.label(item, staging)


def ray_video_engine(
    cfg, models, jobs: list[VideoJob], ledger, *, tracker_factory: Callable | None = None,
    detector: Callable | None = None,
) -> Iterator[VideoResult]:  # fmt: skip
    """Label ``jobs`` on Ray, one video per actor call; results in completion order (see the module docstring)."""
    if not jobs:
        return
    import ray

    from annotator.stages import one_line
    from pipelines.ray_session import ray_session
    from pipelines.resources import RayResources

    vledger = VideoLedger(ledger)
    try:
        check_video_support(cfg, models, custom_tracker=tracker_factory is not None)  # before Ray starts
    except VideoUnsupported as e:
        for job in jobs:
            yield refuse(vledger, job, "unsupported", str(e))
        return
    layout = VideoLayout.of(cfg)
    for job in jobs:
        vledger.begin(job.item.rel_path, job.stat, job.video_fp)
        remove_video_outputs(layout, job.item.rel_path)
    res = RayResources.from_settings(cfg.ray)
    with ray_session(res.address, num_cpus=res.num_cpus, runtime_env=res.runtime_env, quiet=not cfg.progress):
        total = ray.cluster_resources()
        res = res.resolved(cluster_cpus=float(total.get("CPU", 0)), cluster_gpus=float(total.get("GPU", 0)), device=cfg.device)
        actor_cls = ray.remote(VideoActor).options(
            num_cpus=res.cpus_per_actor,
            num_gpus=res.gpus_per_actor or None,
            max_restarts=-1,
            max_task_retries=res.max_task_retries,
        )
        actors = [actor_cls.remote(cfg, models, tracker_factory, detector) for _ in range(min(len(jobs), res.actors[1]))]
        todo = list(jobs)
        running: dict = {}

        def submit(actor) -> None:
            job = todo.pop(0)
            running[actor.label.remote(job.item, layout.staging_dir(job.item.rel_path))] = (actor, job)

        for actor in actors:
            if todo:
                submit(actor)
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, job = running.pop(ref)
            try:
                labelled = ray.get(ref)
            except ray.exceptions.RayError as e:  # the actor died (and its retries too), or failed to start
                staging = layout.staging_dir(job.item.rel_path)
                labelled = LabelledVideo(VideoResult(job.item.rel_path, "failed", f"ray: {one_line(e)}"), staging)
            if todo:
                submit(actor)
            yield commit_video(cfg, vledger, labelled)
