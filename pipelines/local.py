"""In-process engine: CPU pools around one model thread that only runs the models.

::

    cpu pool (cores):   read + decode + letterbox (detector, SAM)   batch k+1, k+2 ahead
    collate (1 thread): stack batch k+1's SAM inputs (pinned memory on CUDA)
    model thread:       detector + SAM on batch k (one device-to-host copy per batch)
    cpu pool (cores):   masks upsampled + polygons for batch k-1, per image
    caller:             results in input order (api.run writes them on its writer thread)

Every queue between the lanes is bounded (two batches ahead, two behind), so memory stays flat whatever
the number of images. On a CPU the segmenter encodes ``cpu_workers`` images at once (each alone in its
own task: identical results), so the model thread hands the models chunks of that size and each chunk is
finished and written while the next one runs.

The engine reports how busy the model thread was (``EngineRun.stats``): ``model_busy_s`` (inside model
calls), ``model_wait_s`` (waiting for prepared input: the CPU lanes are too slow), ``model_blocked_s``
(waiting for the finishing lanes to take results), ``model_thread_s`` (all of it).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from annotator.config import AnnotateConfig
from annotator.engine import EngineRun
from annotator.models import ResolvedModels
from annotator.records import ImageResult, SourceItem
from annotator.segment import usable_cores
from annotator.stages import Stages

_END = object()
_AHEAD = 2  # model batches prepared ahead of the model thread


def local_engine(cfg: AnnotateConfig, models: ResolvedModels, plan, *, stages: Stages | None = None) -> EngineRun:
    """Load the models (now), then compute ``plan.items`` lazily, in this process.

    Args:
        cfg: validated settings; ``cfg.workers`` threads per CPU pool (default: the usable cores).
        models: resolved weight files.
        plan: :class:`annotator.workplan.WorkPlan`; its ``items`` are processed in order.
        stages: already-built stages to reuse (benchmarks, tests, stand-in models); built from ``cfg`` when None.

    Example:
        >>> run = local_engine(cfg, models, plan)  # doctest: +SKIP
        >>> for result in run.results: ...  # doctest: +SKIP
    """
    stages = stages or Stages.build(cfg, models)
    stages.cpu_steps  # noqa: B018 - built now, once, before the pools share it (sets the detector up)
    stats: dict[str, float] = {}
    return EngineRun(names=stages.names, results=_results(cfg, stages, list(plan.items), stats), stats=stats)


def _results(cfg: AnnotateConfig, stages: Stages, items: list[SourceItem], stats: dict) -> Iterator[ImageResult]:
    workers = cfg.workers or usable_cores()
    chunk = getattr(stages.segmenter, "cpu_workers", None) if stages.det_batch == 1 else None
    batches = [items[i : i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size)]
    cpu = ThreadPoolExecutor(workers, thread_name_prefix="cpu")
    collate = ThreadPoolExecutor(1, thread_name_prefix="collate")
    out: queue.Queue = queue.Queue(maxsize=2)  # inferred chunks waiting for the finishing lane
    stop = threading.Event()
    errors: list[BaseException] = []

    def submit(batch: Sequence[SourceItem]) -> Future:
        futures = [cpu.submit(stages.cpu_steps.load, it, cfg) for it in batch]
        return collate.submit(lambda: [stages.collate(part) for part in _parts([f.result() for f in futures], chunk)])

    def model_loop() -> None:
        t_start = time.perf_counter()
        busy = wait = blocked = 0.0
        ahead = collections.deque(submit(b) for b in batches[:_AHEAD])
        try:
            for k in range(len(batches)):
                t0 = time.perf_counter()
                parts = ahead.popleft().result()
                wait += time.perf_counter() - t0
                if k + _AHEAD < len(batches):
                    ahead.append(submit(batches[k + _AHEAD]))
                for part in parts:
                    if stop.is_set():
                        return
                    t0 = time.perf_counter()
                    inferred = stages.infer(part)
                    t1 = time.perf_counter()
                    busy += t1 - t0
                    _put(out, inferred, stop)
                    blocked += time.perf_counter() - t1
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errors.append(e)
        finally:
            for f in ahead:
                f.cancel()
            stats.update(
                model_busy_s=busy, model_wait_s=wait, model_blocked_s=blocked,
                model_thread_s=time.perf_counter() - t_start,
            )  # fmt: skip
            _put(out, _END, stop)

    thread = threading.Thread(target=model_loop, name="models", daemon=True)
    thread.start()
    pending: collections.deque[Future] = collections.deque()
    max_pending = 2 * cfg.batch_size  # images being finished or waiting to go out: memory stays flat
    ended = False
    try:
        while not ended or pending:
            # hand every inferred chunk waiting to the finishing lane, then give out the oldest result as soon
            # as it is finished (results go out while the model thread computes the next chunk)
            while not ended and len(pending) < max_pending:
                inferred = _get(out, thread, timeout=0.02 if pending else None)
                if inferred is None:
                    break
                if inferred is _END:
                    ended = True
                else:
                    pending.extend(cpu.submit(stages.finish, x) for x in inferred)
            if pending and (ended or pending[0].done() or len(pending) >= max_pending):
                yield pending.popleft().result()
        if errors:
            raise errors[0]
    finally:  # normal end, or the caller closed us (interrupt, write error): no new work, threads joined
        stop.set()
        for f in pending:
            f.cancel()
        while thread.is_alive():
            _drain(out)
            thread.join(timeout=0.05)
        collate.shutdown(wait=True, cancel_futures=True)
        cpu.shutdown(wait=True, cancel_futures=True)


def _parts(prepared: list, size: int | None) -> list[list]:
    size = size or len(prepared) or 1
    return [prepared[i : i + size] for i in range(0, len(prepared), size)]


def _put(q: queue.Queue, x, stop: threading.Event) -> None:
    """Put into a bounded queue, giving up when the run is being stopped (nobody takes any more)."""
    while True:
        try:
            q.put(x, timeout=0.05)
            return
        except queue.Full:
            if stop.is_set():
                return


def _get(q: queue.Queue, producer: threading.Thread, timeout: float | None):
    """The next item; None after ``timeout`` seconds without one (None: wait as long as the producer lives)."""
    t_end = None if timeout is None else time.perf_counter() + timeout
    while True:
        try:
            return q.get(timeout=0.1 if timeout is None else max(0.0, t_end - time.perf_counter()))
        except queue.Empty:
            if not producer.is_alive() and q.empty():
                return _END
            if t_end is not None and time.perf_counter() >= t_end:
                return None


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
