"""The Ray engine's user functions: CPU tasks (prepare, finish) and model actors (detector, SAM).

Rows carry ``pickle``-d records in Arrow ``large_binary`` columns. A *chunk* row is one model batch
(``chunk``, ``indices``, ``payload``); after the models, a row is one image (``index``, ``payload``).
CPU tasks get :class:`annotator.stages.CpuSteps` (picklable, no model); model actors build their
:class:`annotator.stages.Stages` once in ``__init__`` and run only the models.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from annotator.config import AnnotateConfig
from annotator.models import ResolvedModels
from annotator.records import ImageResult, ImageStatus, SourceItem
from annotator.stages import CpuSteps, Stages, one_line

StagesFactory = Callable[[AnnotateConfig, ResolvedModels], Stages]

_PROTO = pickle.HIGHEST_PROTOCOL


# ------------------------------------------------------------------------------------------ rows


def table(columns: dict[str, list]):
    """A pyarrow table; payload columns are ``large_binary`` (no 2 GiB limit per block)."""
    import pyarrow as pa

    types = {"chunk": pa.int64(), "index": pa.int64(), "payload": pa.large_binary()}
    return pa.table({k: pa.array(v, type=types.get(k)) for k, v in columns.items()})


def listing_rows(items: list[SourceItem], chunks: list[list[int]]) -> list[dict]:
    """The driver's rows: one per chunk, with the inputs' paths (files are read on the workers)."""
    return [
        {"chunk": k, "indices": idx, "rel_paths": [items[i].rel_path for i in idx], "paths": [str(items[i].path) for i in idx]}
        for k, idx in enumerate(chunks)
    ]


def _chunk_items(t) -> Iterator[tuple[int, list[int], list[SourceItem]]]:
    for k, idx, rels, paths in zip(
        t.column("chunk").to_pylist(), t.column("indices").to_pylist(),
        t.column("rel_paths").to_pylist(), t.column("paths").to_pylist(),
    ):  # fmt: skip
        yield k, idx, [SourceItem(Path(p), r) for p, r in zip(paths, rels)]


def _payloads(t) -> Iterator[tuple[int, list[int], Any]]:
    for k, idx, blob in zip(t.column("chunk").to_pylist(), t.column("indices").to_pylist(), t.column("payload").to_pylist()):
        yield k, idx, pickle.loads(blob)


def _chunk_table(out: list[tuple[int, list[int], Any]]):
    return table({"chunk": [k for k, _, _ in out], "indices": [i for _, i, _ in out], "payload": [pickle.dumps(p, _PROTO) for _, _, p in out]})


def _image_table(indices: list[int], records: list):
    return table({"index": indices, "payload": [pickle.dumps(r, _PROTO) for r in records]})


def image_results(t) -> Iterator[tuple[int, ImageResult]]:
    """``(input index, ImageResult)`` of each row of a finished table (driver side)."""
    for i, blob in zip(t.column("index").to_pylist(), t.column("payload").to_pylist()):
        yield int(i), pickle.loads(blob)


# ------------------------------------------------------------------------------------------ CPU tasks


def prepare_chunks(t, cfg: AnnotateConfig, steps: CpuSteps):
    """[CPU task] chunk rows -> each input read, decoded and letterboxed for both models (or its failure)."""
    out = []
    for k, idx, items in _chunk_items(t):
        out.append((k, idx, [steps.load(item, cfg) for item in items]))
    return _chunk_table(out)


def finish_rows(t, steps: CpuSteps):
    """[CPU task] per-image rows after the models -> masks upsampled, polygons: ``ImageResult`` rows."""
    indices, results = [], []
    for i, x in ((i, pickle.loads(b)) for i, b in zip(t.column("index").to_pylist(), t.column("payload").to_pylist())):
        try:
            res = steps.finish(x)
        except Exception as e:  # noqa: BLE001 - one image, never its neighbours
            res = ImageResult(x.item, ImageStatus.FAILED, getattr(x, "image_hw", None), reason=f"finish: {one_line(e)}")
        indices.append(i)
        results.append(res)
    return _image_table(indices, results)


# ------------------------------------------------------------------------------------------ model actors


class _ModelActor:
    """Base of the model UDFs: build the stages once per actor (torch threads pinned by ``Stages``)."""

    parts: tuple[str, ...] = ("detector", "segmenter")

    def __init__(self, cfg: AnnotateConfig, models: ResolvedModels, factory: StagesFactory | None):
        self.cfg = cfg
        self.stages = factory(cfg, models) if factory is not None else Stages.build(cfg, models, parts=self.parts)


def _isolated(fn: Callable[[list], list], inputs: list) -> list:
    """``fn(inputs)``; when it raises, ``fn`` on each input alone, and an input that still raises -> ``failed``
    (a UDF-level error must not take the batch-mates down)."""
    try:
        return fn(inputs)
    except Exception:  # noqa: BLE001
        out = []
        for x in inputs:
            try:
                out.extend(fn([x]) if not isinstance(x, ImageResult) else [x])
            except Exception as e:  # noqa: BLE001
                out.append(ImageResult(x.item, ImageStatus.FAILED, x.image_hw, reason=one_line(e)))
        return out


class InferActor(_ModelActor):
    """[actor] chunk of prepared images -> detector + SAM -> one row per image (fused mode)."""

    def __call__(self, t):
        indices, records = [], []
        for _, idx, prepared in _payloads(t):
            indices.extend(idx)
            records.extend(_isolated(self.stages.infer, prepared))
        return _image_table(indices, records)


class DetectActor(_ModelActor):
    """[actor] chunk of prepared images -> + detections (split mode)."""

    parts = ("detector",)

    def __call__(self, t):
        return _chunk_table([(k, idx, _isolated(self.stages.detect_only, p)) for k, idx, p in _payloads(t)])


class SegmentActor(_ModelActor):
    """[actor] chunk of detected images -> SAM -> one row per image (split mode)."""

    parts = ("segmenter",)

    def __call__(self, t):
        indices, records = [], []
        for _, idx, detected in _payloads(t):
            indices.extend(idx)
            records.extend(_isolated(self.stages.infer, detected))
        return _image_table(indices, records)
