"""Engines: *where* and *how many* (threads in this process, or a Ray cluster); never *what*.

Every engine follows the contract of :mod:`annotator.engine`: ``engine(cfg, models, plan, **hooks)`` returns
an :class:`~annotator.engine.EngineRun` whose results come in input order; :func:`annotator.api.run` alone
writes them, keeps the ledger and fills the summary.

Example:
    >>> sorted(ENGINES)
    ['local', 'ray']
"""

from __future__ import annotations

from annotator.engine import Engine
from annotator.errors import ConfigError
from pipelines.local import local_engine
from pipelines.local_video import local_video_engine
from pipelines.ray_video import ray_video_engine  # Ray itself is imported only when it runs
from pipelines.ray_images import ray_engine  # Ray itself is imported only when the engine runs

#: engine name (the ``engine`` setting) -> engine
ENGINES: dict[str, Engine] = {"local": local_engine, "ray": ray_engine}

#: engine name -> video engine (one video = one unit of work); every engine of ENGINES has one
VIDEO_ENGINES = {"local": local_video_engine, "ray": ray_video_engine}


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``; :class:`ConfigError` naming the choices otherwise."""
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(f"engine {name!r} is not known; choose one of {', '.join(ENGINES)}") from None
