"""Ray Data settings of one run, and keeping dead actors from holding resources.

Example:
    >>> with data_context(preserve_order=True, progress=False):  # doctest: +SKIP
    ...     ds.iter_batches(...)
"""

from __future__ import annotations

import contextlib
import gc
import logging
import traceback


def release_dead_actors() -> None:
    """Let Ray reclaim the actors of a finished pass now.

    Ray Data releases a pool's actors by dropping its handles, not by killing them. An actor that died and
    is being restarted is still referenced from the exception that reported its death (a reference cycle
    through the traceback) and keeps its CPUs / GPUs until the garbage collector runs, which can starve the
    next pass forever on a small cluster. ``data_context`` also keeps log handlers from holding those
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
def data_context(*, preserve_order: bool, progress: bool):
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
    ctx.execution_options.preserve_order = preserve_order
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
