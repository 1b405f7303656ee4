"""Ray engine: the local engine's steps, spread over a Ray cluster with Ray Data.

One row per *model batch* ("chunk": ``cfg.batch_size`` consecutive inputs, exactly the local engine's
batches) until the models are done, then one row per image::

    listing (driver)           chunk, indices, rel_paths, paths         from plan.items, in input order
      -> prepare  [CPU task]   read + decode + letterbox (detector, SAM)
      -> infer    [actor pool] detector + SAM, nothing else             fused=True (default)
         detect   [actor pool] + detections                             fused=False: two pools, which may
         segment  [actor pool] SAM                                      share one GPU (fractions)
      -> finish   [CPU task]   masks upsampled + polygons, one row per image
      -> driver: results reordered by index, yielded in input order (api.run writes them)

Model actors load their models once (``Stages.build``) and only run them; resources (GPUs per actor, pool
sizes, CPUs per task, retries) come from :class:`pipelines.resources.RayResources`, resolved against the
GPUs and CPUs the cluster reports, never from stage code. CPU tasks get :class:`annotator.stages.CpuSteps`.

Failures:

* a bad file, or a model error on one image, becomes that image's status (``decode_or_error``,
  ``Stages.infer``, which re-runs a failing batch image by image so that only the culprit is ``failed``);
* a worker that *dies* (segfault, OOM kill, lost node): Ray restarts the actor (models reloaded) and re-runs
  the batch at most ``max_task_retries`` times. A batch still lost is dropped by Ray Data
  (``max_errored_blocks=-1``); the driver then re-runs each missing image alone, once, and records the
  images still lost as ``failed``: the run always ends.

The outputs are byte-identical to the local engine's: same model batches, same torch thread count on CPU
(``Stages`` pins it; the count changes float rounding), results in the same order (the same COCO ids).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from annotator.config import AnnotateConfig
from annotator.engine import EngineRun
from annotator.models import ResolvedModels
from annotator.records import ImageResult, ImageStatus, SourceItem
from annotator.stages import CpuSteps, Stages
from pipelines import ray_tasks
from pipelines.ray_data_context import data_context, release_dead_actors
from pipelines.ray_session import ray_session
from pipelines.ray_tasks import StagesFactory
from pipelines.resources import RayResources



def ray_engine(
    cfg: AnnotateConfig, models: ResolvedModels, plan, *, stages_factory: StagesFactory | None = None
) -> EngineRun:
    """The Ray engine (see the module docstring); settings from ``cfg.ray``.

    Args:
        cfg: validated settings.
        models: resolved weight files (readable on every node: shared file system).
        plan: :class:`annotator.workplan.WorkPlan`; its input files must be readable on every node.
        stages_factory: builds the stages inside each model actor (default ``Stages.build``); must be
            picklable. For tests and custom models.

    The driver loads the detector once (its class names, and its letterbox for the CPU tasks) before Ray
    starts, so a bad detector file fails fast. Ray starts (or is joined) on the first result.

    Example:
        >>> run = ray_engine(cfg.model_copy(update={"ray": RaySettings(address="auto")}), models, plan)  # doctest: +SKIP
    """
    steps, names = _cpu_steps(cfg, models)
    stats: dict[str, Any] = {}
    items = list(plan.items)
    results = _results(cfg, models, items, RayResources.from_settings(cfg.ray), steps, stages_factory, stats)
    return EngineRun(names=names, results=results, stats=stats)


def _cpu_steps(cfg: AnnotateConfig, models: ResolvedModels) -> tuple[CpuSteps, dict[int, str]]:
    """The model-free steps for the CPU tasks, and the detector's class names (the detector is loaded here,
    on the driver, once; the segmenter is not)."""
    driver_cfg = cfg.model_copy(update={"device": "cpu"})
    stages = Stages.build(driver_cfg, models, parts=("detector",))
    finisher = Stages.build_finisher(cfg)
    steps = CpuSteps(stages.detector.input_spec, Stages.build_polygonizer(cfg), finisher)
    return steps, stages.names


def _results(cfg, models, items, res: RayResources, steps, factory, stats) -> Iterator[ImageResult]:
    import ray

    session = ray_session(res.address, num_cpus=res.num_cpus, runtime_env=res.runtime_env, quiet=not cfg.progress)
    with session, data_context(preserve_order=res.preserve_order, progress=cfg.progress):
        total = ray.cluster_resources()
        res = res.resolved(cluster_cpus=float(total.get("CPU", 0)), cluster_gpus=float(total.get("GPU", 0)), device=cfg.device)
        stats.update(cluster_cpus=total.get("CPU", 0), cluster_gpus=total.get("GPU", 0))
        try:
            yield from _run_passes(_Pipeline(cfg, models, res, steps, factory), items, cfg.batch_size)
        except ray.exceptions.RayError as e:
            user_error = _annotator_error_in(e)  # e.g. ModelLoadError raised in an actor's __init__
            if user_error is None:
                raise
            raise user_error from None


# ------------------------------------------------------------------------------------------------- driver


def _run_passes(run: _Pipeline, items: Sequence[SourceItem], batch_size: int) -> Iterator[ImageResult]:
    """Pass 1: every model batch. Pass 2 (only after lost workers): each missing image alone, in its own
    tasks. An image still missing is recorded ``failed``: two bounded passes, so the run always ends."""
    order = _InOrder(len(items))
    chunks = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    for i, result in run.execute(items, chunks):
        yield from order.put(i, result)
    release_dead_actors()
    lost = order.missing()
    if lost:
        for i, result in run.execute(items, [[i] for i in lost], chunks_per_task=1):
            yield from order.put(i, result)
        release_dead_actors()
        attempts = run.res.max_task_retries + 1
        reason = (
            f"ray: the worker processing this image was lost {attempts} time{'s' * (attempts > 1)} when it ran "
            "alone (crash, out-of-memory kill or lost node; see the Ray logs)"
        )
        for i in order.missing():
            yield from order.put(i, ImageResult(items[i], ImageStatus.FAILED, reason=reason))


class _InOrder:
    """Results arrive in any order; hand them out in input order (the COCO ids follow it).

    Holds only results that arrived ahead of a missing one: with ``preserve_order`` (default) nothing waits;
    otherwise up to the pool's skew, and everything after a lost batch until its second pass.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.pending: dict[int, ImageResult] = {}
        self.received: set[int] = set()
        self.next = 0
        self.max_pending = 0

    def put(self, index: int, result: ImageResult) -> list[ImageResult]:
        """Accept one result; return those now ready, in order."""
        if index in self.received:  # a re-executed batch may deliver twice; the first one counts
            return []
        self.received.add(index)
        self.pending[index] = result
        self.max_pending = max(self.max_pending, len(self.pending))
        ready = []
        while self.next in self.pending:
            ready.append(self.pending.pop(self.next))
            self.next += 1
        return ready

    def missing(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.received]


class _Pipeline:
    """Builds and runs the Ray Data graph for a list of chunks (lists of input indices)."""

    def __init__(self, cfg, models, res: RayResources, steps: CpuSteps, factory) -> None:
        self.cfg, self.models, self.res, self.steps, self.factory = cfg, models, res, steps, factory

    def execute(
        self, items: Sequence[SourceItem], chunks: list[list[int]], *, chunks_per_task: int | None = None
    ) -> Iterator[tuple[int, ImageResult]]:
        """Run the graph on ``chunks``; yield ``(index, result)`` as they arrive. ``chunks_per_task=1``
        isolates every chunk in its own tasks (second pass)."""
        # max_retries / max_restarts / max_task_retries have no named parameter in map_batches yet; Ray 2.60
        # warns that passing them as remote args is deprecated (removal announced for 2.64).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            ds = self._dataset(items, chunks, chunks_per_task or self.res.chunks_per_task)
        for t in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield from ray_tasks.image_results(t)

    def _dataset(self, items: Sequence[SourceItem], chunks: list[list[int]], per_task: int):
        import ray.data

        res, isolate = self.res, per_task == 1
        rows = ray_tasks.listing_rows(list(items), chunks)
        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / per_task)))
        common = dict(batch_format="pyarrow", zero_copy_batch=True)
        ds = ds.map_batches(
            ray_tasks.prepare_chunks, batch_size=per_task, fn_kwargs={"cfg": self.cfg, "steps": self.steps},
            **common, **res.task_args(),
        )  # fmt: skip
        pools = (
            [(ray_tasks.InferActor, res.gpus_per_actor, res.actors)]
            if res.fused
            else [
                (ray_tasks.DetectActor, res.det_gpus_per_actor, res.det_actors),
                (ray_tasks.SegmentActor, res.gpus_per_actor, res.actors),
            ]
        )
        for udf, gpus, pool in pools:
            ds = ds.map_batches(
                udf, batch_size=1, fn_constructor_args=(self._actor_cfg(gpus), self.models, self.factory),
                **common, **res.actor_args(gpus, pool, isolate=isolate),
            )  # fmt: skip
        return ds.map_batches(
            ray_tasks.finish_rows, batch_size=res.polygon_batch, fn_kwargs={"steps": self.steps},
            **common, **res.task_args(),
        )  # fmt: skip

    def _actor_cfg(self, gpus: float) -> AnnotateConfig:
        """The config an actor sees: its device is the GPU Ray gave it (index 0 of its visible ones), or CPU."""
        device = "0" if gpus > 0 else "cpu"
        if str(self.cfg.device).lower() == "mps":
            device = "mps"
        return self.cfg.model_copy(update={"device": device})


def _annotator_error_in(e: BaseException):
    """The :class:`~annotator.errors.AnnotatorError` a worker raised (its one-line message is the one the user
    needs), rebuilt from the Ray error's text (Ray keeps the remote traceback as text only), or None."""
    from annotator import errors

    for line in reversed(str(e).splitlines()):
        m = re.match(r"(?:annotator\.errors\.)?(\w+): (.+)$", line.strip())
        cls = getattr(errors, m[1], None) if m else None
        if isinstance(cls, type) and issubclass(cls, errors.AnnotatorError):
            return cls(m[2])
    return None
