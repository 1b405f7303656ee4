"""Ray Data runner: the same stages as ``pipelines/local.py``, spread over a Ray cluster.

The pipeline, one row per *model batch* ("chunk": ``cfg.batch_size`` consecutive inputs, exactly the local
engine's batches) until the models are done, then one row per image::

    listing (driver)       chunk, indices, rel_paths, paths          from plan.items, in input order
      -> read     [CPU task]   + compressed file bytes               fused=True
         decode   [CPU task]   + decoded frames                      fused=False
      -> infer    [actor pool] decode + detect + segment             fused=True  (bytes in, masks out)
         detect   [actor pool] + boxes                               fused=False
         segment  [actor pool] masks; one row per image from here on
      -> polygonize [CPU task] masks -> polygons                     one row per image: index, result
      -> driver: iter_batches, reorder by index, DatasetWriter       labels / data.yaml / COCO in input order

Rows carry ``pickle``-d records in an Arrow ``large_binary`` column (masks are tight crops, a few KB).
Model actors load their models once in ``__init__`` (``Stages.build``); resources (GPUs per actor, pool
sizes, CPUs per task, retries) come from :class:`pipelines.resources.RayResources`, never from stage code.

Failures:

* a bad file, or a model error on one image, becomes that image's status (``decode_or_error``,
  ``Stages.infer``); an exception escaping a whole batch is caught in the UDF and the batch is re-run one
  image at a time, so only the culprit is ``failed``;
* a worker that *dies* (segfault, OOM kill, lost node): Ray restarts the actor (models reloaded) and re-runs
  the batch at most ``max_task_retries`` times (Ray Data's own default is forever: a poison input would hang
  the job). A batch still lost is dropped by Ray Data (``max_errored_blocks=-1``); after the run the driver
  re-runs each missing image alone, once, and records the images still lost as ``failed``.

The outputs are byte-identical to the local engine's: same model batches, same torch thread count on CPU
(``Stages`` pins it; the count changes float rounding), same order of writes, hence the same COCO ids.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import pickle
import re
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from annotator.config import AnnotateConfig
from annotator.models import ResolvedModels
from annotator.output import DatasetWriter, open_writer
from annotator.sources import read_image_bytes
from annotator.records import DecodedImage, ImageResult, ImageStatus, SourceItem
from annotator.stages import InferredImage, Stages, decode_or_error, with_seconds
from annotator.summary import RunSummary
from pipelines.resources import RayResources

StagesFactory = Callable[[AnnotateConfig, ResolvedModels], Stages]

_PROTO = pickle.HIGHEST_PROTOCOL
#: environment variables forwarded to the workers of a cluster we join (a local instance inherits them).
_FORWARDED_ENV = ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_VERBOSE", "ANNOTATOR_WEIGHTS_DIR")


def run_ray(
    cfg: AnnotateConfig,
    models: ResolvedModels,
    scan,
    *,
    on_result: Callable[[ImageResult], None] | None = None,
    stages_factory: StagesFactory | None = None,
    **engine_options: Any,
) -> RunSummary:
    """Annotate ``scan.items`` with a Ray Data pipeline and write the outputs (same contract as ``run_local``).

    Args:
        cfg: validated settings.
        models: resolved weight files (paths must be readable on every node: shared file system).
        scan: :class:`annotator.workplan.WorkPlan`: ``items`` to process (in order), ledger, all inputs. Input
            files must be readable on every node (shared file system).
        on_result: called on the driver with each image's result, in input order.
        stages_factory: builds the stages inside each model actor (default ``Stages.build``); must be
            picklable. For tests and custom models.
        **engine_options: any :class:`~pipelines.resources.RayResources` field (``address``, ``fused``,
            ``gpus_per_actor``, ``actors``, ``num_cpus``...); overrides the config's ``ray_*`` fields.

    Returns:
        :class:`~annotator.summary.RunSummary` with ``engine="ray"``. Its ``processing_s`` includes the
        actors' start-up and model loading (the local engine's excludes model loading).

    Raises:
        AnnotatorError: e.g. ``ModelLoadError`` raised in a model actor, re-raised here with its one line.

    Example:
        >>> summary = run_ray(cfg, models, plan, address="auto", gpus_per_actor=0.5)  # doctest: +SKIP
    """
    res = RayResources.from_config(cfg, **engine_options)
    items = list(scan.items)
    summary = RunSummary(engine="ray", output_dir=cfg.output_dir)
    summary.refused = [{"path": p, "reason": r} for p, r in scan.refused]
    names = _detector_names(models, trust=cfg.trust_weights)  # also fails fast, before Ray starts, on a bad detector file
    writer = open_writer(cfg, names, scan)
    summary.label_collisions = sorted(writer.collisions)

    ok = False
    try:
        if items:
            with _ray_session(res, quiet=not cfg.progress) as ray, _data_context(res, progress=cfg.progress):
                total = ray.cluster_resources()
                res = res.resolved(
                    cluster_cpus=float(total.get("CPU", 0)), cluster_gpus=float(total.get("GPU", 0)), device=cfg.device
                )
                t_start = time.perf_counter()
                sink = _OrderedSink(len(items), writer, summary, names, on_result)
                try:
                    _run_passes(_Pipeline(cfg, models, res, stages_factory), items, sink, cfg.batch_size)
                except ray.exceptions.RayError as e:
                    user_error = _annotator_error_in(e)  # e.g. ModelLoadError raised in an actor's __init__
                    if user_error is None:
                        raise
                    raise user_error from None
                summary.processing_s = time.perf_counter() - t_start
        writer.close()
        ok = True
    finally:
        if not ok:
            writer.abort()
    summary.images_per_s = len(items) / summary.processing_s if summary.processing_s > 0 else 0.0
    summary.labels_dir = cfg.labels_dir if cfg.writes_yolo else None
    summary.scores_csv = writer.scores_path
    summary.data_yaml = writer.data_yaml_path
    summary.coco_json = writer.coco_path
    return summary


# ------------------------------------------------------------------------------------------------- driver


def _run_passes(run: _Pipeline, items: Sequence[SourceItem], sink: _OrderedSink, batch_size: int) -> None:
    """Pass 1: every model batch. Pass 2 (only after lost workers): each missing image alone, in its own
    tasks. An image still missing is recorded ``failed``: two bounded passes, so the run always ends."""
    chunks = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    for i, result in run.execute(items, chunks):
        sink.put(i, result)
    _release_dead_actors()
    lost = sink.missing()
    if not lost:
        return
    for i, result in run.execute(items, [[i] for i in lost], chunks_per_task=1):
        sink.put(i, result)
    _release_dead_actors()
    attempts = run.res.max_task_retries + 1
    reason = (
        f"ray: the worker processing this image was lost {attempts} time{'s' * (attempts > 1)} when it ran "
        "alone (crash, out-of-memory kill or lost node; see the Ray logs)"
    )
    for i in sink.missing():
        sink.put(i, ImageResult(items[i], ImageStatus.FAILED, reason=reason))


class _OrderedSink:
    """Results arrive in any order; write them in input order (the COCO ids follow it).

    Holds only results that arrived ahead of a missing one: with ``preserve_order`` (default) nothing waits;
    otherwise up to the pool's skew, and everything after a lost batch until its second pass.
    """

    def __init__(self, n: int, writer: DatasetWriter, summary: RunSummary, names: dict[int, str], on_result) -> None:
        self.n, self.writer, self.summary, self.names, self.on_result = n, writer, summary, names, on_result
        self.pending: dict[int, ImageResult] = {}
        self.received: set[int] = set()
        self.next = 0
        self.max_pending = 0

    def put(self, index: int, result: ImageResult) -> None:
        if index in self.received:  # a re-executed batch may deliver twice; the first one counts
            return
        self.received.add(index)
        self.pending[index] = result
        self.max_pending = max(self.max_pending, len(self.pending))
        while self.next in self.pending:
            res = self.pending.pop(self.next)
            t0 = time.perf_counter()
            self.writer.write(res)
            res = with_seconds(res, write=time.perf_counter() - t0)
            self.summary.add(res, self.names)
            if self.on_result is not None:
                self.on_result(res)
            self.next += 1

    def missing(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.received]


class _Pipeline:
    """Builds and runs the Ray Data graph for a list of chunks (lists of input indices)."""

    def __init__(self, cfg, models, res: RayResources, factory) -> None:
        self.cfg, self.models, self.res, self.factory = cfg, models, res, factory

    def execute(
        self, items: Sequence[SourceItem], chunks: list[list[int]], *, chunks_per_task: int | None = None
    ) -> Iterator[tuple[int, ImageResult]]:
        """Run the graph on ``chunks`` (model batches: lists of indices into ``items``); yield results as
        they arrive. ``chunks_per_task=1`` isolates every chunk in its own tasks (second pass)."""
        ds = self.dataset(items, chunks, chunks_per_task or self.res.chunks_per_task)
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for i, blob in zip(table.column("index").to_pylist(), table.column("result").to_pylist()):
                yield int(i), pickle.loads(blob)

    def dataset(self, items: Sequence[SourceItem], chunks: list[list[int]], per_task: int):
        # max_retries / max_restarts / max_task_retries have no named parameter in map_batches yet; Ray 2.60
        # warns that passing them as remote args is deprecated (removal announced for 2.64).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            return self._dataset(items, chunks, per_task)

    def _dataset(self, items: Sequence[SourceItem], chunks: list[list[int]], per_task: int):
        import ray.data

        cfg, res = self.cfg, self.res
        rows = [
            {
                "chunk": k,
                "indices": idx,
                "rel_paths": [items[i].rel_path for i in idx],
                "paths": [str(items[i].path) for i in idx],
            }
            for k, idx in enumerate(chunks)
        ]
        n_blocks = max(1, math.ceil(len(rows) / per_task))
        ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
        common = dict(batch_format="pyarrow", zero_copy_batch=True)
        if res.fused:
            gpus = res.gpus_per_actor
            ds = ds.map_batches(_read_chunks, batch_size=per_task, **common, **res.task_args())
            ds = ds.map_batches(
                _FusedInfer,
                batch_size=1,
                fn_constructor_args=(self._actor_cfg(gpus), self.models, self.factory),
                **common,
                **res.actor_args(gpus, res.actors, isolate=per_task == 1),
            )
        else:
            dg, sg = res.det_gpus_per_actor, res.gpus_per_actor
            ds = ds.map_batches(
                _decode_chunks, batch_size=per_task, fn_kwargs={"cfg": cfg}, **common, **res.task_args()
            )
            ds = ds.map_batches(
                _DetectActor,
                batch_size=1,
                fn_constructor_args=(self._actor_cfg(dg), self.models, self.factory),
                **common,
                **res.actor_args(dg, res.det_actors, isolate=per_task == 1),
            )
            ds = ds.map_batches(
                _SegmentActor,
                batch_size=1,
                fn_constructor_args=(self._actor_cfg(sg), self.models, self.factory),
                **common,
                **res.actor_args(sg, res.actors, isolate=per_task == 1),
            )
        return ds.map_batches(
            _polygonize_rows, batch_size=res.polygon_batch, fn_kwargs={"cfg": cfg}, **common, **res.task_args()
        )

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


def _detector_names(models: ResolvedModels, *, trust: bool = False) -> dict[int, str]:
    """Class id -> name, as :class:`annotator.detect.Detector` reports them."""
    from annotator.models import load_yolo

    model = load_yolo(models.det_path, trust=trust)
    return {int(k): str(v) for k, v in model.names.items()}


@contextlib.contextmanager
def _ray_session(res: RayResources, *, quiet: bool):
    """Use the Ray already initialised in this process, or start / join one and shut it down afterwards."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=not quiet)
    runtime_env = dict(res.runtime_env or {})
    if res.address is None:
        kwargs.update(num_cpus=res.num_cpus, include_dashboard=False)
    else:
        kwargs["address"] = res.address
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        if env:
            runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def _release_dead_actors() -> None:
    """Let Ray reclaim the actors of a finished pass now.

    Ray Data releases a pool's actors by dropping its handles, not by killing them. An actor that died and
    is being restarted is still referenced from the exception that reported its death (a reference cycle
    through the traceback) and keeps its CPUs / GPUs until the garbage collector runs, which can starve the
    next pass forever on a small cluster. ``_data_context`` also keeps log handlers from holding those
    tracebacks.
    """
    gc.collect()


class _TracebackAsText(logging.Filter):
    """Turn a record's exception into text, so that handlers which keep records (test log capture, memory
    handlers) do not keep the frames, hence the handles of dead Ray actors, alive."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info = None
        return True


@contextlib.contextmanager
def _data_context(res: RayResources, *, progress: bool):
    """Ray Data settings of this run (restored afterwards): progress bars, order, dropped-batch policy."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (
        ctx.enable_progress_bars,
        ctx.enable_operator_progress_bars,
        ctx.max_errored_blocks,
        ctx.execution_options.preserve_order,
    )
    log = logging.getLogger("ray.data")
    saved_level = log.level
    as_text = _TracebackAsText()
    ray_data_loggers = [log] + [
        lg
        for name, lg in logging.root.manager.loggerDict.items()
        if name.startswith("ray.data.") and isinstance(lg, logging.Logger)
    ]
    for lg in ray_data_loggers:  # filters apply to the logger a record is created on, not to its parents
        lg.addFilter(as_text)
    ctx.enable_progress_bars = progress
    ctx.enable_operator_progress_bars = progress
    ctx.max_errored_blocks = -1  # a batch whose worker keeps dying is dropped, then re-run image by image
    ctx.execution_options.preserve_order = res.preserve_order
    if not progress:
        log.setLevel(logging.ERROR)
    try:
        yield ctx
    finally:
        (
            ctx.enable_progress_bars,
            ctx.enable_operator_progress_bars,
            ctx.max_errored_blocks,
            ctx.execution_options.preserve_order,
        ) = saved
        log.setLevel(saved_level)
        for lg in ray_data_loggers:
            lg.removeFilter(as_text)


# ------------------------------------------------------------------------------------------ row helpers


def _table(columns: dict[str, list]):
    """A pyarrow table; payload columns are ``large_binary`` (no 2 GiB limit per block)."""
    import pyarrow as pa

    types = {"chunk": pa.int64(), "index": pa.int64(), "payload": pa.large_binary(), "result": pa.large_binary()}
    return pa.table({k: pa.array(v, type=types.get(k)) for k, v in columns.items()})


def _chunk_items(table) -> Iterator[tuple[int, list[int], list[SourceItem]]]:
    from pathlib import Path

    for k, idx, rels, paths in zip(
        table.column("chunk").to_pylist(),
        table.column("indices").to_pylist(),
        table.column("rel_paths").to_pylist(),
        table.column("paths").to_pylist(),
    ):
        yield k, idx, [SourceItem(Path(p), r) for p, r in zip(paths, rels)]


def _payloads(table) -> Iterator[tuple[int, list[int], Any]]:
    for k, idx, blob in zip(
        table.column("chunk").to_pylist(), table.column("indices").to_pylist(), table.column("payload").to_pylist()
    ):
        yield k, idx, pickle.loads(blob)


def _chunk_table(out: list[tuple[int, list[int], Any]]):
    return _table(
        {
            "chunk": [k for k, _, _ in out],
            "indices": [idx for _, idx, _ in out],
            "payload": [pickle.dumps(p, _PROTO) for _, _, p in out],
        }
    )


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def _timed_decode(item: SourceItem, data: bytes | None, read_s: float, cfg: AnnotateConfig):
    """``decode_or_error`` on bytes already read (``None``: the read failed; decode_or_error re-reads and
    reports it exactly as the local engine does). Returns ``(DecodedImage | ImageResult, seconds)``."""
    t0 = time.perf_counter()
    out = decode_or_error(item, cfg, data)
    return out, read_s + time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ CPU tasks


def _read_chunks(table):
    """[CPU task] chunk rows -> + the compressed bytes of each file (a failed read leaves None)."""
    out = []
    for k, idx, items in _chunk_items(table):
        entries = []
        for item in items:
            t0 = time.perf_counter()
            try:
                data = read_image_bytes(item)  # never blocks on a named pipe or device
            except Exception:  # noqa: BLE001 - reported by decode_or_error, as in the local engine
                data = None
            entries.append((item, data, time.perf_counter() - t0))
        out.append((k, idx, entries))
    return _chunk_table(out)


def _decode_chunks(table, cfg: AnnotateConfig):
    """[CPU task] chunk rows -> + decoded images (or their failure results) and decode seconds."""
    out = []
    for k, idx, items in _chunk_items(table):
        entries = []
        for item in items:
            t0 = time.perf_counter()
            entries.append((decode_or_error(item, cfg), time.perf_counter() - t0))
        out.append((k, idx, entries))
    return _chunk_table(out)


_POLYGON_STAGES: dict[str, Stages] = {}


def _polygon_stages(cfg: AnnotateConfig) -> Stages:
    """Stages holding only the polygonizer (no model loaded), cached per worker process and config."""
    key = cfg.model_dump_json()
    stages = _POLYGON_STAGES.get(key)
    if stages is None:
        stages = Stages(detector=None, segmenter=None, polygonizer=Stages.build_polygonizer(cfg))  # type: ignore[arg-type]
        _POLYGON_STAGES[key] = stages
    return stages


def _polygonize_rows(table, cfg: AnnotateConfig):
    """[CPU task] per-image rows (index, pickled (inferred, decode seconds)) -> (index, pickled ImageResult)."""
    stages = _polygon_stages(cfg)
    indices, blobs = [], []
    for i, blob in zip(table.column("index").to_pylist(), table.column("payload").to_pylist()):
        x, decode_s = pickle.loads(blob)
        try:
            res = with_seconds(stages.polygonize(x), decode=decode_s)
        except Exception as e:  # noqa: BLE001 - one image, never its neighbours
            item = x.item
            hw = getattr(x, "image_hw", None)
            res = ImageResult(item, ImageStatus.FAILED, hw, reason=f"polygonize: {_one_line(e)}")
        indices.append(i)
        blobs.append(pickle.dumps(res, _PROTO))
    return _table({"index": indices, "result": blobs})


# ------------------------------------------------------------------------------------------ model actors


class _ModelActor:
    """Base of the model UDFs: build the stages once per actor.

    Torch's CPU thread count is the model stages' own (``TorchThreads``, set from ``cfg.torch_threads``),
    as in the local engine: CPU results depend on it.
    """

    parts: tuple[str, ...] = ("detector", "segmenter")

    def __init__(self, cfg: AnnotateConfig, models: ResolvedModels, factory: StagesFactory | None):
        self.cfg = cfg
        self.stages = factory(cfg, models) if factory is not None else Stages.build(cfg, models, parts=self.parts)


class _FusedInfer(_ModelActor):
    """[actor] chunk of compressed bytes -> decode, detect, segment -> one row per image."""

    def __call__(self, table):
        indices: list[int] = []
        blobs: list[bytes] = []
        for _, idx, entries in _payloads(table):
            decoded, secs = zip(*(_timed_decode(item, data, read_s, self.cfg) for item, data, read_s in entries))
            inferred = _isolated(self.stages.infer, list(decoded))
            indices.extend(idx)
            blobs.extend(pickle.dumps((r, s), _PROTO) for r, s in zip(inferred, secs))
        return _table({"index": indices, "payload": blobs})


def _isolated(fn: Callable[[list], list], inputs: list) -> list:
    """``fn(inputs)``; when it raises, ``fn`` on each input alone, an input that still raises -> ``failed``."""
    try:
        return fn(inputs)
    except Exception:  # noqa: BLE001
        out = []
        for x in inputs:
            if isinstance(x, ImageResult):
                out.append(x)
                continue
            try:
                out.extend(fn([x]))
            except Exception as e:  # noqa: BLE001
                d = x[0] if isinstance(x, tuple) else x  # split mode: (image, detections, seconds)
                out.append(ImageResult(d.item, ImageStatus.FAILED, d.image_hw, reason=_one_line(e)))
        return out


class _DetectActor(_ModelActor):
    """[actor] chunk of decoded images -> + detections (split mode)."""

    parts = ("detector",)

    def __call__(self, table):
        out = []
        for k, idx, entries in _payloads(table):
            xs = [x for x, _ in entries]
            detected = _isolated(self._detect, xs)
            out.append((k, idx, [(d, ds) for d, (_, ds) in zip(detected, entries)]))
        return _chunk_table(out)

    def _detect(self, xs: list) -> list:
        """DecodedImage -> (DecodedImage, Detections, detect seconds per image); ImageResult passes."""
        decoded = [x for x in xs if isinstance(x, DecodedImage)]
        if not decoded:
            return xs
        t0 = time.perf_counter()
        dets = self.stages.detect([d.image_bgr for d in decoded])
        per = (time.perf_counter() - t0) / len(decoded)
        it = iter(dets)
        return [(x, next(it), per) if isinstance(x, DecodedImage) else x for x in xs]


class _SegmentActor(_ModelActor):
    """[actor] chunk of (image, detections) -> masks -> one row per image (split mode)."""

    parts = ("segmenter",)

    def __call__(self, table):
        indices: list[int] = []
        blobs: list[bytes] = []
        for _, idx, entries in _payloads(table):
            xs = [x for x, _ in entries]
            inferred = _isolated(self._segment, xs)
            indices.extend(idx)
            blobs.extend(pickle.dumps((r, ds), _PROTO) for r, (_, ds) in zip(inferred, entries))
        return _table({"index": indices, "payload": blobs})

    def _segment(self, xs: list) -> list:
        todo = [x for x in xs if isinstance(x, tuple)]
        if not todo:
            return xs
        t0 = time.perf_counter()
        insts = self.stages.segmenter([d.image_bgr for d, _, _ in todo], [det for _, det, _ in todo])
        per = (time.perf_counter() - t0) / len(todo)
        done = {
            id(t): InferredImage(t[0].item, t[0].image_hw, i, {"detect": t[2], "segment": per})
            for t, i in zip(todo, insts)
        }
        return [done[id(x)] if isinstance(x, tuple) else x for x in xs]
