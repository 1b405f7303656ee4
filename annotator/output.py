"""The output tree of a run: a YOLO dataset Ultralytics trains on as is, the COCO JSON, and the run's state.

Two layouts, chosen by :class:`~annotator.config.AnnotateConfig` (``is_sibling_layout``):

* **sibling** -- ``data`` is a folder ``X/images`` and ``output_dir`` is ``X/labels`` (the default for such a
  folder): label files go straight into ``X/labels``, mirroring ``X/images``, the layout Ultralytics pairs
  by path. Every other file written there has a name no label file can take (no ``.txt``)::

      X/labels/<rel_dir>/<stem>.txt   one label file per labelled image (empty when no instance)
      X/labels/data.yaml              train: train.list, val: val.list (test: test.list) (no ``path``:
                                      relative to the yaml)
      X/labels/labelled_images.list   absolute paths of the images that have a label file (only those train:
                                      an image that failed, or whose label file two images would share, is
                                      left out instead of being read as background)
      X/labels/{train,val,test}.list  the same paths by split (:mod:`annotator.splits`)

* **dataset** -- anything else (another output folder, a ``.txt`` list, one image): ``output_dir`` becomes a
  dataset root, with links to the labelled inputs::

      O/labels/<rel_dir>/<stem>.txt   label files
      O/images/<rel_path>             symbolic links (relative) to the labelled input images, only those
      O/data.yaml                     train: train.list, val: val.list (test: test.list)
      O/labelled_images.list          ``./images/<rel_path>`` of every labelled image (relative to the list)
      O/{train,val,test}.list         the same by split (:mod:`annotator.splits`)

When no split is in effect (``split: {val: 0}``, or too few images for a train and a val image) ``data.yaml``
is ``train``/``val``: ``labelled_images.list`` (sibling) or ``images`` (dataset), and no split list is written.

Both layouts also hold ``annotations.json`` (COCO, ``format`` coco/both; ``file_name`` relative to the input
root = to ``images/``), ``scores.csv`` (``save_conf``: detector confidence and SAM score of every label row;
label files hold only what the trainer reads), ``run_report.json`` and ``.annotator/`` (ledger and lock).

Every file is written atomically (temp file + rename) and only when its bytes change, never through a link
inside the output folder (:mod:`annotator.io_atomic`). Label files are written as results arrive; the COCO
JSON, the list and ``scores.csv`` are assembled at the end from the ledger, in input order, so they never
depend on processing order.

Re-runs cost what changed: each run-level output (COCO, ``data.yaml`` + list, ``scores.csv``) records in the
ledger's meta (``built:<name>``) a key of what it was built from -- the ledger's items generation, the input
list, the class names and the settings it depends on -- and the inode, size and mtime of its files. When the key
and the files are the same, it is not rebuilt at all (a no-op run reads no ledger row for it). The COCO file is
rebuilt by streaming each image's stored annotation fragment (``items.coco_json``, made when the image is
written; rows without one, e.g. from an older version or a run without COCO, get theirs once).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from annotator.csv_text import csv_writer
from annotator.config import AnnotateConfig
from annotator.formats.coco import CocoJsonWriter, coco_categories, coco_fragment
from annotator.formats.yolo import (
    data_yaml_text,
    instances_to_yolo_lines,
    polygons_to_yolo_xy,
    write_yolo_labels,
    yolo_label_relpath,
    yolo_label_text,
)
from annotator.io_atomic import (
    atomic_symlink, atomic_write_text, commit_staged, ensure_real_dir, is_own_temp_name, remove_file, stage_bytes,
)  # fmt: skip
from annotator.ledger import FileStat, instances_from_json, instances_to_json
from annotator.path_guard import write_allowed
from annotator.records import ImageResult, ImageStatus, SourceItem
from annotator.splits import SPLITS, split_of

_log = logging.getLogger(__name__)

_PROCESSED = (ImageStatus.OK.value, ImageStatus.EMPTY.value)
LIST_FILENAME = "labelled_images.list"
SCORES_FILENAME = "scores.csv"
#: digits of COCO coordinates (CocoJsonWriter's default), part of the stored fragments' key
COCO_DECIMALS = 2


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


def remove_stale_temp_files(output_dir: Path, *, skip: Sequence[Path] = ()) -> int:
    """Delete the temp files our atomic writers left when a run was killed. Returns the count.

    Only names :func:`annotator.io_atomic.is_own_temp_name` recognises are removed; folders in ``skip`` (the
    input tree, when it lies inside the output folder) and symbolic links to folders are not entered.
    """
    skip_real = {os.path.realpath(p) for p in skip}
    n = 0
    for root, dirs, files in os.walk(output_dir):  # followlinks=False: links to folders are not entered
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) not in skip_real]
        for f in files:
            if is_own_temp_name(f) and write_allowed(os.path.join(root, f), "remove"):  # never in an input
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
    """Write each image's result as it comes (any order), then ``data.yaml``, lists and COCO on :meth:`close`.

    Args:
        cfg: the run's settings (output_dir and layout, format, multipart, save_conf, coco options).
        names: detector class id -> name.
        plan: the run's :class:`annotator.workplan.WorkPlan` (all inputs, ledger, fingerprints).

    Raises:
        annotator.errors.OutputError: from any method, when a file can not be written (disk full, read-only,
            a link inside the output folder); everything written before is complete and recorded.
    """

    def __init__(self, cfg: AnnotateConfig, names: dict[int, str], plan) -> None:
        self.cfg = cfg
        self.names = dict(names)
        self.plan = plan
        self.ledger = plan.ledger
        self.out = Path(cfg.output_dir)
        self.labels = cfg.labels_dir
        self.links = None if cfg.is_sibling_layout else cfg.image_links_dir
        ensure_real_dir(self.out)
        self.collisions = label_collisions(plan.all_items) if cfg.writes_yolo else set()
        self.seconds = 0.0
        self.split_counts: dict[str, int] = {}  # split -> images data.yaml lists in it (set by close())

    @property
    def coco_path(self) -> Path | None:
        return self.out / self.cfg.coco_filename if self.cfg.writes_coco else None

    @property
    def data_yaml_path(self) -> Path | None:
        return self.out / "data.yaml" if self.cfg.writes_yolo else None

    @property
    def scores_path(self) -> Path | None:
        return self.out / SCORES_FILENAME if self.cfg.writes_yolo and self.cfg.save_conf else None

    @property
    def coco_key(self) -> str:
        """What a stored COCO fragment depends on besides the row: ``"polygon:2"``."""
        return f"{self.cfg.coco_segmentation}:{COCO_DECIMALS}"

    def _fragment(self, instances, image_hw) -> str:
        return coco_fragment(instances, image_hw, segmentation=self.cfg.coco_segmentation, decimals=COCO_DECIMALS)

    def label_path(self, rel_path: str) -> Path:
        return self.labels / yolo_label_relpath(rel_path)

    def link_path(self, rel_path: str) -> Path | None:
        return None if self.links is None else self.links / rel_path

    # -- per image ----------------------------------------------------------------------------------------------
    def write(self, result: ImageResult) -> None:
        """Write one image's label file (or remove a stale one), then record it in the ledger."""
        t0 = time.perf_counter()
        rel = result.item.rel_path
        processed = result.status.value in _PROCESSED and result.image_hw is not None
        result_json = coco = None
        if processed:
            self._write_yolo(result.item, result.image_hw, result.instances)
            if self.cfg.writes_coco:  # the image's COCO annotations, stored: the file is assembled from them
                result_json = instances_to_json(result.instances)
                coco = (self._fragment(instances_from_json(result_json), result.image_hw), self.coco_key)
        else:
            self._remove_label(rel)  # an image that fails now must not keep labels of an older version
        stat = self.plan.stats.get(rel) or FileStat(-1, -1)
        self.ledger.record(result, stat, self.plan.model_fp, result_json=result_json, coco=coco)
        self.seconds += time.perf_counter() - t0

    def write_batch(self, results: Sequence[ImageResult]) -> None:
        """:meth:`write` for several results with one sync: their label files are staged (temp files), made
        durable together and renamed into place, then their ledger rows are committed in one transaction. A
        crash anywhere leaves each label file old or complete and no row before its file: the next run redoes
        the batch's images (the same bytes again)."""
        t0 = time.perf_counter()
        staged: list[tuple[Path, Path]] = []
        rows = []
        try:
            for result in results:
                rel = result.item.rel_path
                processed = result.status.value in _PROCESSED and result.image_hw is not None
                result_json = coco = None
                if processed:
                    self._stage_yolo(result.item, result.image_hw, result.instances, staged)
                    if self.cfg.writes_coco:
                        result_json = instances_to_json(result.instances)
                        coco = (self._fragment(instances_from_json(result_json), result.image_hw), self.coco_key)
                else:
                    self._remove_label(rel)
                rows.append((result, self.plan.stats.get(rel) or FileStat(-1, -1), result_json, coco))
            commit_staged(staged)
        except BaseException:
            for tmp, _ in staged:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise
        self.ledger.record_many(rows, self.plan.model_fp)
        self.seconds += time.perf_counter() - t0

    def _stage_yolo(self, item: SourceItem, image_hw, instances, staged: list) -> None:
        """As :meth:`_write_yolo`, the label file staged into ``staged`` (see :meth:`write_batch`)."""
        rel = item.rel_path
        if not self._labelled(rel):
            self._remove_label(rel)
            return
        lines = instances_to_yolo_lines(instances, image_hw, multipart=self.cfg.multipart)
        path = self.label_path(rel)
        tmp = stage_bytes(path, yolo_label_text(lines).encode("utf-8"), root=self.out)
        if tmp is not None:
            staged.append((tmp, path))
        link = self.link_path(rel)
        if link is not None:
            atomic_symlink(os.path.relpath(item.path, link.parent), link, root=self.out)

    def _labelled(self, rel: str) -> bool:
        return self.cfg.writes_yolo and rel not in self.collisions

    def _write_yolo(self, item: SourceItem, image_hw, instances) -> None:
        rel = item.rel_path
        if not self._labelled(rel):
            self._remove_label(rel)
            return
        lines = instances_to_yolo_lines(instances, image_hw, multipart=self.cfg.multipart)
        write_yolo_labels(self.label_path(rel), lines, root=self.out)
        link = self.link_path(rel)
        if link is not None:
            atomic_symlink(os.path.relpath(item.path, link.parent), link, root=self.out)

    def _remove_label(self, rel: str) -> None:
        try:
            label, link = self.label_path(rel), self.link_path(rel)
        except ValueError:  # a rel_path that can't map to a label path: nothing was written for it
            return
        remove_file(label)
        if link is not None:
            remove_file(link)

    # -- run level ----------------------------------------------------------------------------------------------
    def reconcile(self) -> int:
        """Bring unchanged inputs' files in line with the current settings, from the ledger; drop deleted ones.

        Runs before the engine. Rewrites a label file only when the output settings changed, the file (or its
        image link) is missing, or its collision state changed; never runs a model. Returns files touched.
        """
        touched = 0
        output_changed = self.ledger.meta("output_fp") != self.plan.output_fp
        todo = {it.rel_path for it in self.plan.items}
        rest = [it for it in self.plan.all_items if it.rel_path not in todo]
        columns = "status, image_h, image_w" + (", result_json" if output_changed else "")
        for it, (rel, row) in zip(rest, self.ledger.rows_for([it.rel_path for it in rest], columns)):
            if row is None or row[0] not in _PROCESSED:
                continue
            path, link = self.label_path(rel), self.link_path(rel)
            if not self._labelled(rel):
                if os.path.lexists(path) or (link is not None and os.path.lexists(link)):
                    self._remove_label(rel)
                    touched += 1
            elif output_changed or not path.exists() or (link is not None and not os.path.lexists(link)):
                hw = (row[1], row[2]) if row[1] is not None and row[2] is not None else None
                text = row[3] if output_changed else self.ledger.get(rel).result_json  # type: ignore[union-attr]
                self._write_yolo(it, hw, instances_from_json(text))
                touched += 1
        if self.plan.deleted:
            if not self.cfg.keep_deleted:
                for rel in self.plan.deleted:
                    self._remove_label(rel)
                    touched += 1
                self.ledger.forget(self.plan.deleted)
        return touched

    def close(self) -> None:
        """Write ``data.yaml`` (+ the list of labelled images), ``scores.csv`` and the COCO JSON, in input order;
        each only when what it is built from changed since it was last built (see the module docstring)."""
        t0 = time.perf_counter()
        state = self._state()
        if self.cfg.writes_yolo:
            if self.links is not None:
                ensure_real_dir(self.links, self.out)  # an empty images/ still makes a valid (empty) dataset
            self._build("data_yaml", state, self._write_data_yaml)
            if not self.split_counts:  # data.yaml unchanged since an earlier run: its split counts from the ledger
                self.split_counts = json.loads(self.ledger.meta("split_counts") or "{}")
        if self.scores_path is None:
            if self.ledger.meta("scores_csv") == "1":  # written by an earlier run: ours to remove
                remove_file(self.out / SCORES_FILENAME)
                self.ledger.set_meta("scores_csv", "0")
        else:
            self._build("scores", state, self._write_scores)
        if self.cfg.writes_coco:
            self._build("coco", state, self._write_coco)
        if self.ledger.meta("output_fp") != self.plan.output_fp:
            self.ledger.set_meta("output_fp", self.plan.output_fp)
        self.seconds += time.perf_counter() - t0

    # -- what each run-level output is built from --------------------------------------------------------------
    def _state(self) -> str | None:
        """The ledger's items generation and the input list, digested (None with videos: always rebuilt)."""
        if getattr(self.plan, "videos", None):
            return None
        h = hashlib.sha256(str(self.ledger.generation()).encode() + b"\0")
        for it in self.plan.all_items:
            h.update(it.rel_path.encode("utf-8", "surrogateescape") + b"\0")
        return h.hexdigest()

    def _output_files(self, name: str) -> list[Path]:
        if name == "data_yaml":
            return [self.out / "data.yaml", self.out / LIST_FILENAME] + [self.out / f"{k}.list" for k in SPLITS]
        return [self.out / SCORES_FILENAME] if name == "scores" else [self.out / self.cfg.coco_filename]

    def _key(self, name: str, state: str) -> str:
        """Everything output ``name`` depends on: the state, the class names and its own settings."""
        parts: list = [state, self._dense_names()]
        if name == "data_yaml":
            parts += [self.links is None, str(Path(self.cfg.data).absolute()), self.cfg.split.model_dump()]
        elif name == "scores":
            parts += [self.cfg.multipart]
        else:
            parts += [self.cfg.det_model, self.cfg.sam_model, self.coco_key]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()

    def _signature(self, name: str) -> list:
        sig = []
        for f in self._output_files(name):
            try:
                st = os.stat(f)
                sig.append([f.name, st.st_ino, st.st_size, st.st_mtime_ns])
            except OSError:
                sig.append([f.name, None])
        return sig

    def _build(self, name: str, state: str | None, write) -> None:
        """Run ``write()`` unless output ``name`` was built from this state and its files are untouched since."""
        meta_key = f"built:{name}"
        if state is not None:
            try:
                recorded = json.loads(self.ledger.meta(meta_key) or "null")
            except ValueError:
                recorded = None
            if recorded == {"key": self._key(name, state), "files": self._signature(name)}:
                return
        write()
        after = self._state()  # COCO fragments stored while writing raise the generation: record the new one
        if after is not None:
            self.ledger.set_meta(meta_key, json.dumps({"key": self._key(name, after), "files": self._signature(name)}))

    def _processed(self, columns: str = "", *, chunked: bool = False):
        """``(item, (h, w), extra columns...)`` of every processed input, in input order, streamed."""
        items = self.plan.all_items
        cols = "status, image_h, image_w" + (f", {columns}" if columns else "")
        for it, (_, row) in zip(items, self.ledger.rows_for([it.rel_path for it in items], cols, chunked=chunked)):
            if row is not None and row[0] in _PROCESSED and row[1] is not None and row[2] is not None:
                yield (it, (row[1], row[2]), *row[3:])

    def _write_data_yaml(self) -> None:
        """``data.yaml`` + the image lists: ``labelled_images.list`` (all) and ``train``/``val``/``test.list``
        (:mod:`annotator.splits`). Sibling layout: absolute paths (the images lie outside the output folder);
        dataset layout: ``./images/...`` (Ultralytics reads ``./`` relative to the list: the folder can move)."""
        labelled = [it for it, *_ in self._processed() if self._labelled(it.rel_path)]
        names = self._dense_names()
        # no 'path:' key: Ultralytics then resolves train/val against data.yaml's own folder (a relative 'path'
        # would be taken relative to its datasets_dir), so the yaml keeps working when the folder moves
        sibling = self.links is None
        if not sibling:
            ensure_real_dir(self.links, self.out)  # an empty images/ still makes a valid (empty) dataset
        entries: list[tuple[str, str]] = []  # (line, split)
        for it in labelled:
            if sibling:
                line = str((self.cfg.data / it.rel_path).absolute())
            else:
                line = "./" + Path(os.path.relpath(self.link_path(it.rel_path), self.out)).as_posix()
            entries.append((line, split_of(it.rel_path, self.cfg.split)))
        for f in self._video_frames():  # a video's frames all take the video's split
            line = str(f.image_path) if sibling else "./" + Path(os.path.relpath(f.image_path, self.out)).as_posix()
            entries.append((line, split_of(f.video, self.cfg.split)))
        self._write_list(LIST_FILENAME, [line for line, _ in entries])
        by_split = {k: [line for line, sp in entries if sp == k] for k in SPLITS}
        written: list[str] = []
        if by_split["train"] and (by_split["val"] or by_split["test"]):
            for k in SPLITS:
                if by_split[k]:
                    self._write_list(f"{k}.list", by_split[k])
                    written.append(k)
            if not by_split["val"] and self.cfg.split.val > 0:
                _log.warning("split: no image hashed into val (%d labelled): val is the training images", len(entries))
            text = data_yaml_text(
                names, train="train.list", val="val.list" if by_split["val"] else "train.list",
                test="test.list" if by_split["test"] else None,
            )  # fmt: skip
        else:  # no split in effect (val 0, or too few images to split): validate on the training images, as before
            if entries and (self.cfg.split.val > 0 or self.cfg.split.test > 0):
                _log.warning("split: %d labelled image(s), no train/val split: val is the training images", len(entries))
            listed = LIST_FILENAME if sibling else "images"
            text = data_yaml_text(names, train=listed, val=listed)
        self.split_counts = {k: len(by_split[k]) for k in written}
        self.ledger.set_meta("split_counts", json.dumps(self.split_counts))  # read back when a re-run skips this
        self._remove_stale_split_lists(written)
        atomic_write_text(self.out / "data.yaml", text, root=self.out)

    def _write_list(self, name: str, lines: list[str]) -> None:
        """One image list (one path a line, as Ultralytics reads a ``.txt`` split) in the output folder."""
        atomic_write_text(self.out / name, "".join(f"{line}\n" for line in lines), root=self.out)

    def _remove_stale_split_lists(self, written: list[str]) -> None:
        """Remove the ``<split>.list`` files an earlier run wrote and this one does not (ledger meta ``split_lists``)."""
        before = json.loads(self.ledger.meta("split_lists") or "[]")
        for k in before:
            if k in SPLITS and k not in written:
                remove_file(self.out / f"{k}.list")
        if before != written:
            self.ledger.set_meta("split_lists", json.dumps(written))

    def _write_scores(self) -> None:
        """``scores.csv``: one line per YOLO label row, the same order (``save_conf``)."""
        path = self.out / SCORES_FILENAME
        buf = io.StringIO()
        w = csv_writer(buf)  # any name stays one field (annotator/csv_text.py)
        w.writerow(["image", "label_file", "row", "class_id", "class_name", "det_conf", "sam_score"])
        for it, _, result_json in self._processed("result_json"):
            if not self._labelled(it.rel_path):
                continue
            label = yolo_label_relpath(it.rel_path)
            self._score_rows(w, it.rel_path, label, instances_from_json(result_json))
        for f in self._video_frames():  # then every frame of the finished videos, as in the COCO JSON
            label = Path(os.path.relpath(f.label_path, self.labels)).as_posix()
            self._score_rows(w, f.coco_file_name, label, f.instances)
        atomic_write_text(path, buf.getvalue(), root=self.out)
        if self.ledger.meta("scores_csv") != "1":
            self.ledger.set_meta("scores_csv", "1")

    def _score_rows(self, w, image: str, label: str, instances) -> None:
        """The ``scores.csv`` lines of one label file: one per YOLO row, rows counted as the label writer keeps them."""
        kept = [
            inst for inst in instances
            if len(polygons_to_yolo_xy(inst.polygons_xy_px, multipart=self.cfg.multipart)) >= 3
        ]  # fmt: skip
        for k, inst in enumerate(kept):
            name = self.names.get(inst.class_id, f"class{inst.class_id}")
            w.writerow([image, label, k, inst.class_id, name, f"{inst.det_conf:.6f}", f"{inst.sam_score:.6f}"])

    def _write_coco(self) -> None:
        """Assemble the COCO JSON from the stored per-image fragments (rows lacking one for these settings get it
        now, stored in batches), then the finished videos' frames."""
        info = {"description": f"annotator: {self.cfg.det_model} boxes -> {self.cfg.sam_model} masks"}
        ensure_real_dir(self.out)
        key, pending = self.coco_key, []
        with CocoJsonWriter(
            self.out / self.cfg.coco_filename,
            coco_categories(self._dense_names()),
            info=info,
            segmentation=self.cfg.coco_segmentation,
        ) as coco:
            for it, hw, coco_key, fragment in self._processed("coco_key, coco_json", chunked=True):
                if coco_key != key or fragment is None:  # an older row, or one written without COCO
                    row = self.ledger.get(it.rel_path)
                    fragment = self._fragment(instances_from_json(row.result_json if row else None), hw)
                    pending.append((fragment, key, it.rel_path))
                    if len(pending) >= 500:
                        self.ledger.set_coco(pending)
                        pending = []
                coco.add_fragment(it.rel_path, hw, fragment)
            self.ledger.set_coco(pending)
            for f in self._video_frames():  # then every frame of the finished videos (annotator/video/layout.py)
                extra = {"video": f.video, "frame_index": f.frame_index}
                coco.add_image(f.coco_file_name, f.image_hw, f.instances, extra)

    def _video_frames(self):
        """The written frames of the run's finished videos (none in an image-only run)."""
        videos = getattr(self.plan, "videos", None)
        if not videos:
            return iter(())
        from annotator.video.outputs import finished_frames

        return finished_frames(self.cfg, self.ledger, videos)

    def abort(self) -> None:
        """Nothing to undo: every file written so far is complete and recorded."""

    def _dense_names(self) -> dict[int, str]:
        n = max(self.names) + 1 if self.names else 0
        return {i: self.names.get(i, f"class{i}") for i in range(n)}
