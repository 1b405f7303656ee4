"""The engine contract: where every engine (local threads, Ray) meets :func:`annotator.api.run`.

::

    api.run(cfg) -- plan (ledger: what is new) --> engine(cfg, models, plan) --> EngineRun
                                                                                   names, results (in input order)
    api.run owns the writer, the ledger and the summary <---------------------------------'

An engine decides only *where* and *how many*: it never opens the writer nor fills the summary. The
registry of engines is :data:`pipelines.ENGINES`.

Example:
    >>> def one_by_one(cfg, models, plan, **hooks):  # doctest: +SKIP
    ...     stages = Stages.build(cfg, models)
    ...     results = (stages.process([decode_or_error(it, cfg)])[0] for it in plan.items)
    ...     return EngineRun(names=stages.names, results=results)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from annotator.records import ImageResult


@dataclass
class EngineRun:
    """What an engine hands back: the detector's class names and the results, lazily.

    Attributes:
        names: detector class id -> name (``data.yaml``, COCO categories, the summary), known before any
            result (the writer needs them first).
        results: one :class:`ImageResult` per work-plan item, **in input order**. Work starts on the first
            ``next()``; closing the generator (``results.close()``, done by ``api.run`` on an interrupt or a
            write error) stops handing out work and returns once the engine's own threads have stopped.
        stats: figures the engine measured, filled while ``results`` is consumed (e.g. the local engine's
            ``model_busy_s``, ``model_thread_s``); copied into ``RunSummary.engine_stats``.
    """

    names: dict[int, str]
    results: Iterator[ImageResult]
    stats: dict[str, Any] = field(default_factory=dict)


#: ``engine(cfg, models, plan, **hooks) -> EngineRun``; hooks are test/benchmark injections (``stages``...).
Engine = Callable[..., EngineRun]
