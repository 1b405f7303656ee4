"""Timing helpers of the benchmark: stage clocks (proxies around a model), peak memory, the device.

Example:
    >>> clock = TimedCall(lambda x: x * 2, sync=lambda: None)
    >>> clock(21), clock.seconds > 0
    (42, True)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


class StageClock:
    """Accumulates seconds of the wrapped calls (proxy: every other attribute goes to the wrapped object)."""

    def __init__(self, target: Any, sync: Callable[[], None]) -> None:
        self._target = target
        self._sync = sync
        self.seconds = 0.0
        self.boxes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class TimedCall(StageClock):
    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._target(*args, **kwargs)
        finally:
            self._sync()
            self.seconds += time.perf_counter() - t0


class TimedStream(StageClock):
    """For ``det_model(data, stream=True)``: times each step of the generator (decode + detect)."""

    def __call__(self, *args, **kwargs):
        it = iter(self._target(*args, **kwargs))
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.seconds += time.perf_counter() - t0
                return
            self._sync()
            self.seconds += time.perf_counter() - t0
            self.boxes += len(item.boxes) if item.boxes is not None else 0
            yield item


class CountingDetector(StageClock):
    """Counts the boxes our detector (or the gt stub) hands to the segmenter, whichever entry point is used."""

    def __call__(self, images):
        dets = self._target(images)
        self.boxes += sum(len(d) for d in dets)
        return dets

    def infer(self, prepared, image_hws):
        dets = self._target.infer(prepared, image_hws)
        self.boxes += sum(len(d) for d in dets[: len(image_hws)])
        return dets


class PeakRSS:
    """Context manager sampling this process's resident memory every ``interval_s``; ``peak_mib`` after exit."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def current_mib() -> float:
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError, AttributeError):
            import resource  # not Linux: the process's lifetime peak is the best we can do

            scale = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, self.current_mib())

    def __enter__(self) -> PeakRSS:
        self.peak_mib = self.current_mib()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mib = max(self.peak_mib, self.current_mib())


class Device:
    """Where the models run, for synchronising timers and reading CUDA memory."""

    def __init__(self, device: str) -> None:
        import torch

        d = str(device).strip().lower()
        self.cuda = torch.cuda.is_available() and d not in ("cpu", "mps")
        self.name = "cuda" if self.cuda else (d or "cpu")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return torch.cuda.max_memory_allocated() / 2**20


def load_1min() -> float | None:
    """The OS 1-minute load average (other processes compete for the CPU), or None where there is none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None

