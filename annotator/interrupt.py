"""A stop asked for by a signal, kept as a flag so that it is not lost where Python drops exceptions.

The CLI's SIGINT / SIGTERM handler raises :class:`Interrupted` in the main thread, wherever that thread is. When
it is running a finaliser or a weakref callback at that moment (garbage collection inside a library, Ray's
object references), Python prints "Exception ignored in ..." and goes on: the stop would be lost and the run
would go to its end. So the handler also records the request here, and the run's loops call
:func:`raise_if_requested` between results, which raises it again where it can not be dropped.

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

_requested: str | None = None


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
