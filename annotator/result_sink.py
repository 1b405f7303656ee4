"""Where results become files: one writer thread, fed in input order through a bounded queue.

:func:`annotator.api.run` takes results from the engine on the calling thread and puts them here; the
writer thread writes them (label files, ledger rows; what is queued when it is free goes as one batch: one
sync, one transaction), counts each in the summary, calls ``on_result`` and
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
        max_batch: results written together (``writer.write_batch``: one sync of their label files, one ledger
            transaction) when that many are queued; fewer are written as soon as the writer is free.
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
        max_batch: int = 64,
    ) -> None:
        self.writer, self.summary, self.names, self.on_result, self.bar = writer, summary, names, on_result, bar
        self.max_batch = max_batch
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

    def _batch(self) -> tuple[list[ImageResult], bool]:
        """The next result (waiting for it) and those queued behind it, up to ``max_batch``; True when done."""
        first = self._q.get()
        if first is _DONE or self._stop.is_set():
            return [], True
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                nxt = self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is _DONE:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _loop(self) -> None:
        while True:
            batch, done = self._batch()
            if self._stop.is_set():
                return
            try:
                if batch:
                    t0 = time.perf_counter()
                    if len(batch) > 1 and hasattr(self.writer, "write_batch"):
                        self.writer.write_batch(batch)  # one sync, one ledger transaction
                    else:
                        for res in batch:
                            self.writer.write(res)
                    per_image = (time.perf_counter() - t0) / len(batch)
                for res in batch:
                    res = with_seconds(res, write=per_image)
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
            if done:
                return
