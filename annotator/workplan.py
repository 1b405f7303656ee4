"""Decide what a run must do: which inputs are new or changed, which are unchanged, which were deleted.

``model_fp`` fingerprints everything that changes masks or polygons (weight file contents, detector and
segmenter settings, polygon settings, device kind); ``output_fp`` everything that only changes how
results are written (format, YOLO row options, COCO options). A changed ``model_fp`` re-annotates an
image; a changed ``output_fp`` rewrites its files from the ledger without running any model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from annotator.config import AnnotateConfig
from annotator.ledger import FileStat, Ledger, is_current, sha256_file, stat_items
from annotator.models import ResolvedModels
from annotator.records import SourceItem

_MODEL_KEYS = (
    "conf", "iou", "imgsz", "max_det", "classes", "sam_min_score", "simplify_tolerance_px", "min_area_px",
    "compat", "half", "max_pixels", "min_side_px", "torch_threads", "prompts", "detector_masks",
)  # fmt: skip
_OUTPUT_KEYS = ("format", "save_conf", "multipart", "coco_segmentation", "coco_filename")
# ``split`` is in neither fingerprint: data.yaml and the split lists are rebuilt from the ledger at the end of
# every run (annotator/output.py), so a new split fraction re-runs no model and rewrites no label file.


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _device_kind(device: str) -> str:
    d = str(device).strip().lower()
    return "cpu" if d == "cpu" else ("mps" if d == "mps" else "gpu-or-auto")


def model_fingerprint(cfg: AnnotateConfig, models: ResolvedModels, weight_hashes: dict[str, str]) -> str:
    settings = {k: getattr(cfg, k) for k in _MODEL_KEYS}
    settings["multipart_parts"] = "largest" if cfg.multipart == "largest" else "all"
    settings["rle"] = cfg.writes_coco and cfg.coco_segmentation == "rle"
    settings["device_kind"] = _device_kind(cfg.device)
    settings["det_sha256"] = weight_hashes[str(models.det_path)]
    settings["sam_sha256"] = weight_hashes[str(models.sam_path)]
    settings["sam_arch"] = models.sam_name
    return _digest(settings)


def output_fingerprint(cfg: AnnotateConfig) -> str:
    return _digest({k: getattr(cfg, k) for k in _OUTPUT_KEYS})


@dataclass
class WorkPlan:
    """What one run does. Engines process ``items``; the writer uses the rest.

    Attributes:
        items: inputs to process now (new, modified, settings changed, or previously ``failed``), in order.
        all_items: every current input, in order (COCO ids follow this order).
        refused: ``(rel_path, reason)`` refused while scanning.
        unchanged: how many inputs were skipped because their ledger row is current.
        deleted: rel_paths in the ledger whose file is gone.
        stats: ``rel_path -> FileStat`` of current inputs (None if it vanished while scanning).
        ledger, model_fp, output_fp: see module docstring.
        videos: rel_paths of the current videos; their finished frames join data.yaml's list and the COCO JSON.
    """

    items: list[SourceItem]
    all_items: list[SourceItem]
    refused: list[tuple[str, str]]
    unchanged: int
    deleted: list[str]
    stats: dict[str, FileStat | None]
    ledger: Ledger
    model_fp: str
    output_fp: str
    weight_hashes: dict[str, str] = field(default_factory=dict)
    det_sha256: str = ""
    videos: list[str] = field(default_factory=list)  # current videos' rel_paths (annotator/video), in order


def plan_work(cfg: AnnotateConfig, models: ResolvedModels, scan, ledger: Ledger, weight_hashes: dict[str, str]) -> WorkPlan:
    model_fp = model_fingerprint(cfg, models, weight_hashes)
    all_items = list(scan.items)
    stats = stat_items(all_items, with_hash=cfg.hash_inputs)
    rows = ledger.plan_rows()  # one query: size, mtime, hash, fingerprint and status of every row
    todo = [it for it in all_items if stats[it.rel_path] is None or not is_current(rows.get(it.rel_path), stats[it.rel_path], model_fp)]
    current = {it.rel_path for it in all_items}
    deleted = sorted(p for p in rows if p not in current)
    del rows
    return WorkPlan(
        items=todo,
        all_items=all_items,
        refused=list(scan.refused),
        unchanged=len(all_items) - len(todo),
        deleted=deleted,
        stats=stats,
        ledger=ledger,
        model_fp=model_fp,
        output_fp=output_fingerprint(cfg),
        weight_hashes=weight_hashes,
        det_sha256=weight_hashes[str(models.det_path)],
    )


def labels_digest(folder: Path) -> str:
    """SHA-256 over a labels tree (``prompts: boxes``: the labels stand where the detector's weights stand)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.txt")):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def hash_weights(models: ResolvedModels, pinned: dict[str, str]) -> dict[str, str]:
    """SHA-256 of both weight files; a file pinned in ``pinned`` (by file name or path) must match. The detector's
    stand-in digest (``models.det_sha256``, ``prompts: everything``) is taken as it is.

    Raises:
        WeightsHashMismatchError: before anything is loaded (loading unpickles code).
    """
    from annotator.errors import AnnotatorError

    out = {str(models.det_path): models.det_sha256} if models.det_sha256 else {}  # prompts: everything
    for path in (models.det_path, models.sam_path):
        if str(path) in out:
            continue
        digest = sha256_file(Path(path)) if not Path(path).is_dir() else labels_digest(Path(path))
        out[str(path)] = digest
        want = pinned.get(Path(path).name) or pinned.get(str(path))
        if want is not None and want.lower() != digest:
            raise AnnotatorError(
                f"weight file {path} has SHA-256 {digest}, but {want.lower()} is pinned for it: refusing to load it "
                f"(replace the file with the pinned one, or update --weights-sha256)"
            )
    return out
