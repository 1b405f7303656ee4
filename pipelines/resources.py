"""Where the Ray engine's resources are decided: one frozen :class:`RayResources`, nothing in stage code.

Every setting has three sources, first one wins:

1. a keyword argument of :func:`pipelines.ray_images.run_ray` (``engine_options`` of :func:`annotator.api.run`),
   named as the field (``fused=False``, ``gpus_per_actor=0.5``);
2. the run's config, the field prefixed with ``ray_`` (``ray_fused: false`` in a YAML config);
3. the default below (``None`` defaults are filled from the cluster in :meth:`RayResources.resolved`).

Two settings are deliberately *not* here, because they change the outputs' bytes and must be the local
engine's: the model batch (a model call always gets ``cfg.batch_size`` consecutive inputs, the local
engine's batches) and torch's CPU thread count (``cfg.torch_threads``, pinned by ``Stages``; several CPU
actors on one node each use that many threads).

Example:
    >>> r = RayResources.from_config(None, fused=False, gpus_per_actor=0.5, actors=(1, 4))
    >>> r.fused, r.gpus_per_actor, r.actors
    (False, 0.5, (1, 4))
    >>> RayResources.from_config(None, gpu_per_actor=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    annotator.errors.ConfigError: unknown Ray engine option 'gpu_per_actor' (did you mean 'gpus_per_actor'?)...
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields, replace
from typing import Any

from annotator.errors import ConfigError

#: config fields are the RayResources fields with this prefix (``ray_fused``, ``ray_gpus_per_actor``...).
CONFIG_PREFIX = "ray_"


@dataclass(frozen=True)
class RayResources:
    """Placement and sizes of the Ray Data pipeline.

    Attributes:
        address: ``None`` starts a local Ray instance (stopped at the end); ``"auto"`` joins the cluster of
            this machine; ``"ray://host:10001"`` joins a remote cluster through Ray Client.
        num_cpus: CPUs of a local instance started by the run (``None``: all of this machine).
        fused: ``True``: one actor decodes, detects and segments (compressed bytes travel, images are never
            shipped twice). ``False``: decode on CPU tasks, then a detector pool and a segmenter pool.
        gpus_per_actor: GPUs of each fused actor (split mode: each segmenter actor). Fractions share a GPU
            (``0.5``: two actors per GPU). ``None``: 1 when the cluster has GPUs and ``device`` is not
            ``"cpu"``, else 0.
        det_gpus_per_actor: split mode: GPUs of each detector actor (``None``: ``gpus_per_actor / 4``, the
            detector being much lighter than SAM).
        cpus_per_actor: CPUs reserved by each model actor (Ray's scheduling unit; torch's thread count is
            ``cfg.torch_threads``). ``None``: 1, scaled down when the cluster is too small to hold the
            minimum pools plus one CPU task (else Ray Data waits forever for a free CPU).
        actors: ``(min, max)`` size of the fused / segmenter actor pool (autoscaled between them).
            ``None``: ``(1, GPUs // gpus_per_actor)`` with GPUs, ``(1, 1)`` on CPU.
        det_actors: ``(min, max)`` size of the split-mode detector pool (``None``: as ``actors``).
        cpus_per_task: CPUs of each read / decode / polygonize task (``None``: 1, scaled down likewise).
        chunks_per_task: model batches (of ``batch_size`` images) read or decoded per CPU task.
        polygon_batch: images per polygonize task.
        max_task_retries: times Ray re-runs a model batch / task whose worker died (crash, OOM kill,
            node lost) before giving up on it; the images of a batch given up are retried one by one, and an
            image whose worker still dies is recorded ``failed``. Bounded, so a poison input never hangs
            the run (Ray Data's own default for actors is to retry forever).
        preserve_order: let Ray Data deliver results in input order, so the driver holds at most one result
            at a time. ``False``: results come as they finish and the driver reorders them in a buffer keyed
            by input index (same files; measured on 500 tiny images with 2 actors: same speed within the
            noise, but the buffer peaked at 113-337 results, i.e. it grows with the pool's skew).
        runtime_env: Ray runtime environment for the workers (``{"working_dir": ...}``, ``{"pip": [...]}``).
    """

    address: str | None = None
    num_cpus: int | None = None
    fused: bool = True
    gpus_per_actor: float | None = None
    det_gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    actors: tuple[int, int] | None = None
    det_actors: tuple[int, int] | None = None
    cpus_per_task: float | None = None
    chunks_per_task: int = 2
    polygon_batch: int = 32
    max_task_retries: int = 2
    preserve_order: bool = True
    runtime_env: dict | None = None

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_config(cls, cfg: Any = None, **options: Any) -> RayResources:
        """Settings from the engine options, else the config's ``ray_*`` fields, else the defaults.

        Raises:
            ConfigError: unknown option (with the closest valid name) or invalid value.
        """
        names = cls.names()
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown Ray engine option {key!r}{hint}; valid: {', '.join(names)}")
        values: dict[str, Any] = {}
        for name in names:
            if options.get(name) is not None:
                values[name] = options[name]
            elif cfg is not None and getattr(cfg, CONFIG_PREFIX + name, None) is not None:
                values[name] = getattr(cfg, CONFIG_PREFIX + name)
        res = cls(**values)
        res.validate()
        return res

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the setting when a value can not be scheduled."""

        def bad(name: str, msg: str) -> ConfigError:
            return ConfigError(f"{name}: {msg} (got {getattr(self, name)!r})")

        for name in ("gpus_per_actor", "det_gpus_per_actor"):
            v = getattr(self, name)
            if v is not None and (v < 0 or (v > 1 and v != int(v)) or not math.isfinite(v)):
                raise bad(name, "must be 0, a fraction in (0, 1] to share a GPU, or a whole number of GPUs")
        for name in ("cpus_per_actor", "cpus_per_task"):
            if getattr(self, name) is not None and not (getattr(self, name) > 0):
                raise bad(name, "must be > 0")
        for name in ("actors", "det_actors"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, int):
                object.__setattr__(self, name, (v, v))
                v = (v, v)
            if len(v) != 2 or not all(isinstance(x, int) for x in v) or not 1 <= v[0] <= v[1]:
                raise bad(name, "must be a pool size n or (min, max) with 1 <= min <= max")
            object.__setattr__(self, name, (int(v[0]), int(v[1])))
        for name in ("chunks_per_task", "polygon_batch"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise bad(name, "must be an integer >= 1")
        if not (isinstance(self.max_task_retries, int) and 0 <= self.max_task_retries <= 100):
            raise bad("max_task_retries", "must be an integer in [0, 100] (bounded: a poison input must end)")
        if self.num_cpus is not None and not (isinstance(self.num_cpus, int) and self.num_cpus >= 1):
            raise bad("num_cpus", "must be an integer >= 1")
        if self.address is not None and not isinstance(self.address, str):
            raise bad("address", "must be 'auto', 'ray://host:port', 'host:port' or None")

    def resolved(self, *, cluster_cpus: float, cluster_gpus: float, device: str) -> RayResources:
        """Fill the ``None`` defaults from the cluster (total CPUs and GPUs) and the run's device.

        Example:
            >>> r = RayResources(fused=False).resolved(cluster_cpus=2, cluster_gpus=0, device="cpu")
            >>> r.gpus_per_actor, r.actors, round(r.cpus_per_actor, 2), round(r.cpus_per_task, 2)
            (0.0, (1, 1), 0.67, 0.67)
        """
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if cluster_gpus > 0 and str(device).lower() != "cpu" else 0.0
        det_gpus = self.det_gpus_per_actor if self.det_gpus_per_actor is not None else gpus / 4
        actors = self.actors
        if actors is None:
            actors = (1, max(1, int(cluster_gpus // gpus))) if gpus > 0 else (1, 1)
        det_actors = self.det_actors or actors
        cpa = 1.0 if self.cpus_per_actor is None else float(self.cpus_per_actor)
        cpt = 1.0 if self.cpus_per_task is None else float(self.cpus_per_task)
        n_min = actors[0] + (0 if self.fused else det_actors[0])
        need = n_min * cpa + cpt  # the smallest pools plus one CPU task must fit, or the pipeline stalls
        if cluster_cpus > 0 and need > cluster_cpus:
            scale = cluster_cpus / need
            cpa = cpa * scale if self.cpus_per_actor is None else cpa
            cpt = cpt * scale if self.cpus_per_task is None else cpt
        return replace(
            self,
            gpus_per_actor=float(gpus),
            det_gpus_per_actor=float(det_gpus),
            actors=actors,
            det_actors=det_actors,
            cpus_per_actor=cpa,
            cpus_per_task=cpt,
        )

    # ------------------------------------------------------------------------------- map_batches arguments
    def actor_args(self, gpus: float, pool: tuple[int, int], *, isolate: bool = False) -> dict[str, Any]:
        """Keyword arguments of ``Dataset.map_batches`` for a model actor pool.

        ``isolate``: one batch in flight per actor, so that a dying actor takes no queued batch with it
        (the second pass, which runs suspects one image at a time).
        """
        from ray.data import ActorPoolStrategy

        return dict(
            compute=ActorPoolStrategy(
                min_size=pool[0], max_size=pool[1], max_tasks_in_flight_per_actor=1 if isolate else None
            ),
            num_cpus=self.cpus_per_actor,
            num_gpus=gpus if gpus > 0 else None,
            max_restarts=-1,  # a dead actor is replaced (models reloaded) ...
            max_task_retries=self.max_task_retries,  # ... but a batch is retried a bounded number of times
        )

    def task_args(self) -> dict[str, Any]:
        """Keyword arguments of ``Dataset.map_batches`` for a CPU task (read, decode, polygonize)."""
        return dict(num_cpus=self.cpus_per_task, max_retries=self.max_task_retries)
