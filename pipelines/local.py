"""In-process runner: the stages in one process, threads around the model calls.

Three lanes overlap:

* a thread pool decodes batch ``k+1`` while the models run on batch ``k``;
* the main thread runs detector + segmenter on batch ``k`` (torch uses the cores);
* one writer thread polygonizes and writes batch ``k-1`` in input order.

Used for debugging, tests and small jobs; ``pipelines/ray_images.py`` runs the same stages on Ray.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from annotator.config import AnnotateConfig
from annotator.models import ResolvedModels
from annotator.output import open_writer
from annotator.records import DecodedImage, ImageResult, SourceItem
from annotator.stages import Stages, decode_or_error, with_seconds
from annotator.summary import RunSummary


def _batches(items: Sequence[SourceItem], size: int) -> Iterator[Sequence[SourceItem]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _timed_decode(item: SourceItem, cfg: AnnotateConfig) -> tuple[DecodedImage | ImageResult, float]:
    t0 = time.perf_counter()
    out = decode_or_error(item, cfg)
    return out, time.perf_counter() - t0


def run_local(
    cfg: AnnotateConfig,
    models: ResolvedModels,
    scan,
    *,
    on_result: Callable[[ImageResult], None] | None = None,
    stages: Stages | None = None,
) -> RunSummary:
    """Annotate ``scan.items`` in this process and write the outputs.

    Args:
        cfg: validated settings.
        models: resolved weight files.
        scan: :class:`annotator.workplan.WorkPlan`: ``items`` to process (in order), ledger, all inputs.
        on_result: called with each image's result, in input order (progress bars, ledgers).
        stages: already-built stages to reuse (benchmarks, tests); built from ``cfg`` when None.
    """
    items = list(scan.items)
    summary = RunSummary(engine="local", output_dir=cfg.output_dir)
    summary.refused = [{"path": p, "reason": r} for p, r in scan.refused]
    stages = stages or Stages.build(cfg, models)
    writer = open_writer(cfg, stages.names, scan)
    summary.label_collisions = sorted(writer.collisions)
    bar = _progress(len(items)) if cfg.progress else None

    # On CPU the segmenter computes `cpu_workers` images at once, each alone in its own task: handing it the
    # batch in chunks of that size gives the very same results, and each chunk's images are polygonized and
    # written (and the progress bar moves) while the next chunk runs, instead of once per batch.
    chunk = getattr(stages.segmenter, "cpu_workers", None) if stages.det_batch == 1 else None
    stop = threading.Event()  # set when the run is interrupted: the writer stops after the image in flight

    def finish(batch: list, decode_s: list[float]) -> None:
        for x, ds in zip(batch, decode_s):
            if stop.is_set():
                return
            res = with_seconds(stages.polygonize(x), decode=ds)
            t0 = time.perf_counter()
            writer.write(res)
            res = with_seconds(res, write=time.perf_counter() - t0)
            summary.add(res, stages.names)
            if on_result is not None:
                on_result(res)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(annotated=summary.annotated, empty=summary.empty, failed=summary.failed)

    t_start = time.perf_counter()
    ok = False
    with ThreadPoolExecutor(cfg.workers, thread_name_prefix="decode") as dec, ThreadPoolExecutor(
        1, thread_name_prefix="write"
    ) as post:
        batches = list(_batches(items, cfg.batch_size))
        pending: list[Future] = [dec.submit(_timed_decode, it, cfg) for it in batches[0]] if batches else []
        writes: list[Future] = []
        max_waiting = 2 * -(-cfg.batch_size // (chunk or cfg.batch_size))  # bounded: two batches' worth of chunks
        try:
            for k in range(len(batches)):
                decoded = [f.result() for f in pending]
                if k + 1 < len(batches):
                    pending = [dec.submit(_timed_decode, it, cfg) for it in batches[k + 1]]
                for part in _batches(decoded, chunk or len(decoded)):
                    inferred = stages.infer([d for d, _ in part])
                    writes.append(post.submit(finish, inferred, [s for _, s in part]))
                    if len(writes) > max_waiting:
                        writes.pop(0).result()
            for w in writes:
                w.result()
            writer.close()
            ok = True
        except BaseException:  # Ctrl-C / SIGTERM / a write error: no new work; the image being written completes
            stop.set()
            for f in [*pending, *writes]:
                f.cancel()
            raise
        finally:
            if not ok:
                writer.abort()
            if bar is not None:
                bar.close()
    summary.processing_s = time.perf_counter() - t_start
    summary.images_per_s = len(items) / summary.processing_s if summary.processing_s > 0 else 0.0
    summary.labels_dir = cfg.labels_dir if cfg.writes_yolo else None
    summary.scores_csv = writer.scores_path
    summary.data_yaml = writer.data_yaml_path
    summary.coco_json = writer.coco_path
    return summary


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, desc="annotate")
