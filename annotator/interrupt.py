"""A stop asked for by a signal, kept as a flag so that it is not lost where Python drops exceptions.

The CLI's SIGINT / SIGTERM handler raises :class:`Interrupted` in the main thread, wherever that thread is. When
it is running a finaliser or a weakref callback at that moment (garbage collection inside a library, Ray's
object references), Python prints "Exception ignored in ..." and goes on: the stop would be lost and the run
would go to its end. So the handler also records the request here, and the run's loops call
:func:`raise_if_requested` between results, which raises it again where it can not be dropped.

The handler itself is installed here too (:func:`install_handler`), so that code that lets a library replace
it can put it back: ``ray.init`` installs Ray's own SIGTERM handlers in the driver (a Python one that exits 1
or 15, and a C one in its core worker that prints "SIGTERM received" and aborts, exit 134); the Ray engine calls
:func:`reinstall_handler` right after it, and a SIGTERM then ends a Ray run as it ends a local one (143).

Example:
    >>> request_stop("SIGINT"); requested()
    'SIGINT'
    >>> try:
    ...     raise_if_requested()
    ... except Interrupted as e:
    ...     e.signame
    'SIGINT'
    >>> clear(); raise_if_requested()  # nothing asked for: returns
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

_requested: str | None = None

#: the signals that stop a run
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: the handler of the run in progress (installed by the CLI), or None
_active_handler: Callable | None = None


class Interrupted(BaseException):
    """SIGINT / SIGTERM during a run (a BaseException, like KeyboardInterrupt, so no handler swallows it)."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


def request_stop(signame: str) -> None:
    """Record that the run must stop (the first signal's name is kept)."""
    global _requested
    if _requested is None:
        _requested = signame


def requested() -> str | None:
    """The name of the signal that asked the run to stop, or None."""
    return _requested


def clear() -> None:
    """Forget the request (the run that received it has ended)."""
    global _requested
    _requested = None


def raise_if_requested() -> None:
    """Raise :class:`Interrupted` if a stop was asked for (called between results, in the main thread)."""
    if _requested is not None:
        raise Interrupted(_requested)


def install_handler(handler: Callable) -> dict:
    """Make ``handler`` the SIGINT / SIGTERM handler of the run in progress (main thread only); returns the
    previous handlers for :func:`restore_handlers`."""
    global _active_handler
    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    _active_handler = handler
    return old


def restore_handlers(old: dict) -> None:
    """Put back the handlers :func:`install_handler` replaced (the run has ended)."""
    global _active_handler
    _active_handler = None
    for s, h in old.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)


def active_handler() -> Callable | None:
    """The SIGINT / SIGTERM handler of the run in progress, or None (no run, or a library call without the CLI)."""
    return _active_handler


def reinstall_handler() -> None:
    """Install the run's handler again after a library replaced it (``ray.init``); a no-op outside a run
    (the library API without the CLI) and off the main thread, where signal handlers can not be set."""
    if _active_handler is None or threading.current_thread() is not threading.main_thread():
        return
    for s in STOP_SIGNALS:
        signal.signal(s, _active_handler)
