"""Engine settings: the ``ray:`` section of a config, validated once, here.

Only *where* and *how many* live here (placement, pool sizes, retries): nothing that changes an output byte.
The model batch (``batch_size``) and torch's CPU thread count (``torch_threads``) stay top-level settings,
because both change float rounding and therefore must be the same for every engine.

Example:
    >>> s = RaySettings(fused=False, gpus_per_actor=0.5, actors=4)
    >>> s.actors, s.gpus_per_actor
    ((4, 4), 0.5)

In YAML::

    engine: ray
    ray:
      address: auto
      gpus_per_actor: 0.5
      actors: [2, 16]
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RaySettings(BaseModel):
    """Placement and sizes of the Ray engine (``engine: ray``). ``None``: filled from the cluster at run time
    (:meth:`pipelines.resources.RayResources.resolved`).

    Attributes:
        address: ``None`` starts a local Ray instance (stopped at the end); ``"auto"`` joins the cluster of
            this machine; ``"host:6379"`` the head's GCS address (token auth: docs/cluster.md); ``"ray://host:10001"`` through Ray
            Client (needs ``pip install "ray[client]"``).
        num_cpus: CPUs of a local instance started by the run (``None``: all of this machine).
        fused: ``True``: CPU tasks read, decode and letterbox; one actor pool runs detector + segmenter.
            ``False``: a detector pool and a segmenter pool (both may share one GPU with fractions).
        gpus_per_actor: GPUs of each fused / segmenter actor; fractions share a GPU (``0.5``: two actors
            per GPU). ``None``: 1 when the cluster has GPUs and ``device`` is not ``"cpu"`` (split mode on a
            single GPU: 0.75, leaving room for a detector actor), else 0.
        det_gpus_per_actor: split mode: GPUs of each detector actor (``None``: 0.25 with GPUs).
        cpus_per_actor: CPUs Ray reserves per model actor (scheduling only). ``None``: 1, scaled down when the
            cluster is too small to hold the minimum pools plus one CPU task.
        actors: ``n`` or ``(min, max)`` size of the fused / segmenter pool (``None``: ``(1, GPUs //
            gpus_per_actor)`` with GPUs, ``(1, 1)`` on CPU).
        det_actors: split mode: size of the detector pool (``None``: as ``actors``).
        cpus_per_task: CPUs of each read / prepare / polygonize task (``None``: 1, scaled down likewise).
        chunks_per_task: model batches read and prepared per CPU task.
        polygon_batch: images per polygonize task.
        max_task_retries: re-runs of a batch whose worker *died* (crash, OOM kill, lost node); then each of
            its images runs alone once, and one that still kills its worker is recorded ``failed``. Bounded,
            so a poison input never hangs the run.
        preserve_order: Ray Data delivers results in input order (the driver holds one at a time); ``False``:
            the driver reorders them (memory grows with the pool's skew).
        runtime_env: Ray runtime environment for the workers (``{"working_dir": ...}``, ``{"pip": [...]}``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(None, description="cluster to join: 'auto' or 'head-host:6379'; None: start a local instance")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray instance the run starts")
    fused: bool = Field(True, description="one model actor pool (detector + segmenter); false: one pool each")
    gpus_per_actor: float | None = Field(None, ge=0, description="GPUs per model actor; 0.5 shares a GPU")
    det_gpus_per_actor: float | None = Field(None, ge=0, description="split mode: GPUs per detector actor")
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs Ray reserves per model actor")
    actors: tuple[int, int] | None = Field(None, description="model actor pool size, n or [min, max]")
    det_actors: tuple[int, int] | None = Field(None, description="split mode: detector pool size, n or [min, max]")
    cpus_per_task: float | None = Field(None, gt=0, description="CPUs per read / prepare / polygonize task")
    chunks_per_task: int = Field(2, ge=1, description="model batches read and prepared per CPU task")
    polygon_batch: int = Field(32, ge=1, description="images per polygonize task")
    max_task_retries: int = Field(2, ge=0, le=100, description="re-runs of a batch whose worker died (bounded)")
    preserve_order: bool = Field(True, description="Ray Data keeps input order (else the driver reorders)")
    runtime_env: dict | None = Field(None, description="Ray runtime_env for the workers (working_dir, pip...)")

    @field_validator("gpus_per_actor", "det_gpus_per_actor")
    @classmethod
    def _gpu_share(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or (v > 1 and v != int(v))):
            raise ValueError(f"must be 0, a fraction in (0, 1] to share a GPU, or a whole number of GPUs, got {v}")
        return v

    @field_validator("actors", "det_actors", mode="before")
    @classmethod
    def _pool(cls, v):
        if v is None:
            return v
        if isinstance(v, bool):
            raise ValueError(f"must be a pool size n or [min, max], got {v!r}")
        if isinstance(v, int):
            v = (v, v)
        try:
            lo, hi = (int(x) for x in v)
        except (TypeError, ValueError):
            raise ValueError(f"must be a pool size n or [min, max], got {v!r}") from None
        if not 1 <= lo <= hi:
            raise ValueError(f"must be a pool size n or [min, max] with 1 <= min <= max, got {v!r}")
        return (lo, hi)
