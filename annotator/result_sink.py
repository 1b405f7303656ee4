"""Where results become files: one writer thread, fed in input order through a bounded queue.

:func:`annotator.api.run` takes results from the engine on the calling thread and puts them here; the
writer thread writes each one (label file, ledger row), counts it in the summary, calls ``on_result`` and
moves the progress bar. Writing off the calling thread means that a signal (Ctrl-C, SIGTERM), which Python
delivers to the main thread, never cuts a write in half: the image being written completes, the queued
ones are dropped (they are not in the ledger, so the next run does them).

Example:
    >>> sink = ResultSink(writer, summary, names)  # doctest: +SKIP
    >>> for res in engine_run.results:  # doctest: +SKIP
    ...     sink.put(res)
    >>> sink.finish()  # doctest: +SKIP
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from annotator.records import ImageResult
from annotator.stages import with_seconds
from annotator.summary import RunSummary

_DONE = object()


class ResultSink:
    """Write results on a dedicated thread; errors surface on the next :meth:`put` or in :meth:`finish`.

    Args:
        writer: :class:`annotator.output.DatasetWriter`.
        summary: counts and stage seconds are added to it (on the writer thread).
        names: detector class id -> name, for the per-class counts.
        on_result: called with each written result, in input order (progress, ledgers of callers).
        bar: a tqdm bar moved per image, or None.
        max_queued: results waiting to be written before :meth:`put` blocks (memory stays flat).
    """

    def __init__(
        self,
        writer,
        summary: RunSummary,
        names: dict[int, str],
        *,
        on_result: Callable[[ImageResult], None] | None = None,
        bar=None,
        max_queued: int = 64,
    ) -> None:
        self.writer, self.summary, self.names, self.on_result, self.bar = writer, summary, names, on_result, bar
        self._q: queue.Queue = queue.Queue(max_queued)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="write", daemon=True)
        self._thread.start()

    def put(self, result: ImageResult) -> None:
        """Queue one result (blocks while the queue is full); raises the writer thread's error, if any."""
        while True:
            self._raise_error()
            try:
                self._q.put(result, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every queued result is written; raise the writer's error, if any."""
        self.put(_DONE)  # type: ignore[arg-type]
        self._thread.join()
        self._raise_error()

    def stop(self) -> None:
        """Drop the queued results; return once the result being written (if any) is complete."""
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._q.put(_DONE)
        self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while True:
            res = self._q.get()
            if res is _DONE or self._stop.is_set():
                return
            try:
                t0 = time.perf_counter()
                self.writer.write(res)
                res = with_seconds(res, write=time.perf_counter() - t0)
                self.summary.add(res, self.names)
                if self.on_result is not None:
                    self.on_result(res)
                if self.bar is not None:
                    s = self.summary
                    self.bar.update(1)
                    self.bar.set_postfix(annotated=s.annotated, empty=s.empty, failed=s.failed)
            except BaseException as e:  # noqa: BLE001 - handed to the calling thread
                self._error = e
                return
