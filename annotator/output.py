"""The output tree of a run: mirrored YOLO label files, ``data.yaml`` and the COCO JSON.

Layout under ``output_dir``::

    <rel_dir>/<stem>.txt      one YOLO-seg label file per processed image (empty when no instance)
    data.yaml                 class names (and train/val paths when the input is an ``images/`` folder)
    annotations.json          COCO JSON (``format`` coco/both), file_name relative to ``data``
    run_report.json           settings, model files, counts, timings, failures of the last run
    .annotator/               the ledger (``ledger.sqlite``) and the lock

Every file is written atomically (temp file + rename), so a re-run replaces, never appends, and a crash
never leaves a half-written file. Label files are written as results arrive, in any order; the COCO JSON
is assembled at the end from the ledger, in input order, so its ids never depend on processing order.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from annotator.config import AnnotateConfig
from annotator.formats.coco import CocoJsonWriter, coco_categories
from annotator.formats.yolo import data_yaml_text, instances_to_yolo_lines, write_yolo_labels, yolo_label_relpath
from annotator.io_atomic import atomic_write_text
from annotator.ledger import FileStat, instances_from_json
from annotator.records import ImageResult, ImageStatus, SourceItem

_PROCESSED = (ImageStatus.OK.value, ImageStatus.EMPTY.value)


def label_collisions(items: Sequence[SourceItem]) -> set[str]:
    """rel_paths of images whose YOLO label file would be shared with another image (``a.jpg`` + ``a.png``).

    Example:
        >>> sorted(label_collisions([SourceItem(Path(p), p) for p in ["a.jpg", "a.png", "sub/a.jpg"]]))
        ['a.jpg', 'a.png']
    """
    by_label: dict[str, list[str]] = defaultdict(list)
    for it in items:
        by_label[yolo_label_relpath(it.rel_path).casefold()].append(it.rel_path)
    return {p for paths in by_label.values() if len(paths) > 1 for p in paths}


def remove_stale_temp_files(output_dir: Path) -> int:
    """Delete temp files our atomic writers left behind when a run was killed (``.*.tmp``). Returns the count."""
    n = 0
    for root, dirs, files in os.walk(output_dir):
        for f in files:
            if f.startswith(".") and f.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(root, f))
                    n += 1
                except OSError:
                    pass
    return n


def open_writer(cfg: AnnotateConfig, names: dict[int, str], plan) -> DatasetWriter:
    """The writer engines use: created, then reconciled with the ledger before any image is processed."""
    writer = DatasetWriter(cfg, names, plan)
    plan.ledger.set_meta("names", json.dumps({"det_sha256": plan.det_sha256, "names": {str(k): v for k, v in names.items()}}))
    writer.reconcile()
    return writer


def names_from_ledger(plan) -> dict[int, str] | None:
    """The detector's class names recorded by an earlier run with the same detector file, if any."""
    raw = plan.ledger.meta("names")
    if not raw:
        return None
    doc = json.loads(raw)
    if doc.get("det_sha256") != plan.det_sha256:
        return None
    return {int(k): v for k, v in doc["names"].items()}


class DatasetWriter:
    """Write each image's result as it comes (any order), then ``data.yaml`` and COCO on :meth:`close`.

    Args:
        cfg: the run's settings (output_dir, format, multipart, save_conf, coco options).
        names: detector class id -> name.
        plan: the run's :class:`annotator.workplan.WorkPlan` (all inputs, ledger, fingerprints).
    """

    def __init__(self, cfg: AnnotateConfig, names: dict[int, str], plan) -> None:
        self.cfg = cfg
        self.names = dict(names)
        self.plan = plan
        self.ledger = plan.ledger
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.collisions = label_collisions(plan.all_items) if cfg.writes_yolo else set()
        self.seconds = 0.0

    @property
    def coco_path(self) -> Path | None:
        return self.out / self.cfg.coco_filename if self.cfg.writes_coco else None

    @property
    def data_yaml_path(self) -> Path | None:
        return self.out / "data.yaml" if self.cfg.writes_yolo else None

    def label_path(self, rel_path: str) -> Path:
        return self.out / yolo_label_relpath(rel_path)

    # -- per image ----------------------------------------------------------------------------------------------
    def write(self, result: ImageResult) -> None:
        """Write one image's label file (or remove a stale one), then record it in the ledger."""
        t0 = time.perf_counter()
        rel = result.item.rel_path
        processed = result.status.value in _PROCESSED and result.image_hw is not None
        if processed:
            self._write_yolo(rel, result.image_hw, result.instances)
        else:
            self._remove_label(rel)  # an image that fails now must not keep labels of an older version
        stat = self.plan.stats.get(rel) or FileStat(-1, -1)
        self.ledger.record(result, stat, self.plan.model_fp)
        self.seconds += time.perf_counter() - t0

    def _write_yolo(self, rel: str, image_hw, instances) -> None:
        if not self.cfg.writes_yolo or rel in self.collisions:
            self._remove_label(rel)
            return
        lines = instances_to_yolo_lines(instances, image_hw, multipart=self.cfg.multipart, with_conf=self.cfg.save_conf)
        write_yolo_labels(self.label_path(rel), lines)

    def _remove_label(self, rel: str) -> None:
        try:
            self.label_path(rel).unlink()
        except FileNotFoundError:
            pass
        except ValueError:  # a rel_path that can't map to a label path: nothing was written for it
            pass

    # -- run level ----------------------------------------------------------------------------------------------
    def reconcile(self) -> int:
        """Bring unchanged inputs' label files in line with the current settings, from the ledger; drop deleted ones.

        Runs before the engine. Rewrites a label file only when the output settings changed, the file is
        missing, or its collision state changed; never runs a model. Returns the number of files touched.
        """
        touched = 0
        output_changed = self.ledger.meta("output_fp") != self.plan.output_fp
        todo = {it.rel_path for it in self.plan.items}
        for it in self.plan.all_items:
            rel = it.rel_path
            if rel in todo:
                continue
            row = self.ledger.get(rel)
            if row is None or row.status not in _PROCESSED:
                continue
            path = self.label_path(rel)
            want_file = self.cfg.writes_yolo and rel not in self.collisions
            if not want_file:
                if path.exists():
                    self._remove_label(rel)
                    touched += 1
            elif output_changed or not path.exists():
                self._write_yolo(rel, row.image_hw, instances_from_json(row.result_json))
                touched += 1
        if self.plan.deleted:
            if not self.cfg.keep_deleted:
                for rel in self.plan.deleted:
                    self._remove_label(rel)
                    touched += 1
                self.ledger.forget(self.plan.deleted)
        return touched

    def close(self) -> None:
        """Write ``data.yaml`` and assemble the COCO JSON from the ledger, in input order."""
        t0 = time.perf_counter()
        if self.cfg.writes_yolo:
            data = self.cfg.data
            kw = {}
            if data.is_dir() and data.name == "images":
                kw = {"path": str(data.parent), "train": "images", "val": "images"}
            atomic_write_text(self.out / "data.yaml", data_yaml_text(self._dense_names(), **kw))
        if self.cfg.writes_coco:
            self._write_coco()
        self.ledger.set_meta("output_fp", self.plan.output_fp)
        self.seconds += time.perf_counter() - t0

    def _write_coco(self) -> None:
        info = {"description": f"annotator: {self.cfg.det_model} boxes -> {self.cfg.sam_model} masks"}
        with CocoJsonWriter(
            self.out / self.cfg.coco_filename,
            coco_categories(self._dense_names()),
            info=info,
            segmentation=self.cfg.coco_segmentation,
        ) as coco:
            for it in self.plan.all_items:
                row = self.ledger.get(it.rel_path)
                if row is None or row.status not in _PROCESSED or row.image_hw is None:
                    continue
                coco.add_image(it.rel_path, row.image_hw, instances_from_json(row.result_json))

    def abort(self) -> None:
        """Nothing to undo: every file written so far is complete and recorded."""

    def _dense_names(self) -> dict[int, str]:
        n = max(self.names) + 1 if self.names else 0
        return {i: self.names.get(i, f"class{i}") for i in range(n)}
