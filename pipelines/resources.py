"""Where the Ray engine's resources are decided: one frozen :class:`RayResources`, nothing in stage code.

The settings come from the config's ``ray:`` section (:class:`annotator.engine_settings.RaySettings`,
validated there, once); :meth:`RayResources.resolved` fills the ``None`` defaults from the GPUs and CPUs the
cluster reports, so that the minimum pools always fit (a pool that can not be placed would wait forever).

Two settings are deliberately *not* here, because they change the outputs' bytes and must be the local
engine's: the model batch (a model call always gets ``cfg.batch_size`` consecutive inputs, the local
engine's batches) and torch's CPU thread count (``cfg.torch_threads``, pinned by ``Stages``).

Example:
    >>> from annotator.engine_settings import RaySettings
    >>> r = RayResources.from_settings(RaySettings(fused=False)).resolved(cluster_cpus=16, cluster_gpus=1, device="")
    >>> r.gpus_per_actor + r.det_gpus_per_actor <= 1.0, r.actors, r.det_actors  # one pair fits on one GPU
    (True, (1, 1), (1, 4))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from annotator.engine_settings import RaySettings


@dataclass(frozen=True)
class RayResources:
    """Placement and sizes of the Ray Data pipeline: the fields of
    :class:`~annotator.engine_settings.RaySettings` (documented there), with every ``None`` filled by
    :meth:`resolved`."""

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

    @classmethod
    def from_settings(cls, settings: RaySettings) -> RayResources:
        """The run's ``ray:`` section (already validated) as resources still to be :meth:`resolved`."""
        return cls(**settings.model_dump())

    def resolved(self, *, cluster_cpus: float, cluster_gpus: float, device: str) -> RayResources:
        """Fill the ``None`` defaults from the cluster (total CPUs and GPUs) and the run's device.

        Example:
            >>> r = RayResources(fused=False).resolved(cluster_cpus=2, cluster_gpus=0, device="cpu")
            >>> r.gpus_per_actor, r.actors, round(r.cpus_per_actor, 2), round(r.cpus_per_task, 2)
            (0.0, (1, 1), 0.67, 0.67)
        """
        use_gpus = cluster_gpus > 0 and str(device).lower() != "cpu"
        # split mode: a segmenter actor and a detector actor must fit on one GPU together (0.75 + 0.25), or a
        # one-GPU node could never place the minimum pools and the run would wait forever
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = (1.0 if self.fused else 0.75) if use_gpus else 0.0
        det_gpus = self.det_gpus_per_actor
        if det_gpus is None:
            det_gpus = 0.25 if use_gpus and not self.fused else 0.0
        actors = self.actors
        if actors is None:
            actors = (1, max(1, int(cluster_gpus // gpus))) if gpus > 0 else (1, 1)
        det_actors = self.det_actors
        if det_actors is None:
            det_actors = (1, max(1, int(cluster_gpus // det_gpus))) if det_gpus > 0 else actors
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
