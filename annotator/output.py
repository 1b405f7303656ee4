"""The output tree of a run: mirrored YOLO label files, ``data.yaml`` and the COCO JSON.

Layout under ``output_dir``::

    <rel_dir>/<stem>.txt      one YOLO-seg label file per processed image (empty when no instance)
    data.yaml                 class names (and train/val paths when the input is an ``images/`` folder)
    annotations.json          COCO JSON (``format`` coco/both), file_name relative to ``data``

Every file is written atomically (temp file + rename), so a re-run replaces, never appends, and a crash
never leaves a half-written file. Results must be given in input order (the COCO ids follow it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from annotator.config import AnnotateConfig
from annotator.formats.coco import CocoJsonWriter, coco_categories
from annotator.formats.yolo import data_yaml_text, instances_to_yolo_lines, write_yolo_labels, yolo_label_relpath
from annotator.io_atomic import atomic_write_text
from annotator.records import ImageResult, ImageStatus, SourceItem


def label_collisions(items: Sequence[SourceItem]) -> set[str]:
    """rel_paths of images whose YOLO label file would be shared with another image (``a.jpg`` + ``a.png``).

    Example:
        >>> from pathlib import Path
        >>> sorted(label_collisions([SourceItem(Path(p), p) for p in ["a.jpg", "a.png", "sub/a.jpg"]]))
        ['a.jpg', 'a.png']
    """
    by_label: dict[str, list[str]] = defaultdict(list)
    for it in items:
        by_label[yolo_label_relpath(it.rel_path).casefold()].append(it.rel_path)
    return {p for paths in by_label.values() if len(paths) > 1 for p in paths}


class DatasetWriter:
    """Write each image's result as it comes, then ``data.yaml`` and the COCO JSON on :meth:`close`.

    Args:
        cfg: the run's settings (output_dir, format, multipart, save_conf, coco options).
        names: detector class id -> name.
        items: all inputs of the run (to detect label-file collisions up front).
    """

    def __init__(self, cfg: AnnotateConfig, names: dict[int, str], items: Sequence[SourceItem]) -> None:
        self.cfg = cfg
        self.names = dict(names)
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.collisions = label_collisions(items) if cfg.writes_yolo else set()
        self.coco: CocoJsonWriter | None = None
        self.seconds = 0.0
        if cfg.writes_coco:
            self.coco = CocoJsonWriter(
                self.out / cfg.coco_filename,
                coco_categories(self.names),
                info={"description": f"annotator: {cfg.det_model} boxes -> {cfg.sam_model} masks"},
                segmentation=cfg.coco_segmentation,
            )

    @property
    def coco_path(self) -> Path | None:
        return self.out / self.cfg.coco_filename if self.cfg.writes_coco else None

    @property
    def data_yaml_path(self) -> Path | None:
        return self.out / "data.yaml" if self.cfg.writes_yolo else None

    def write(self, result: ImageResult) -> None:
        """Write one processed image's label file / COCO entries. Failed images write nothing."""
        if result.status not in (ImageStatus.OK, ImageStatus.EMPTY) or result.image_hw is None:
            return
        t0 = time.perf_counter()
        if self.cfg.writes_yolo and result.item.rel_path not in self.collisions:
            lines = instances_to_yolo_lines(
                result.instances, result.image_hw, multipart=self.cfg.multipart, with_conf=self.cfg.save_conf
            )
            write_yolo_labels(self.out / yolo_label_relpath(result.item.rel_path), lines)
        if self.coco is not None:
            self.coco.add_image(result.item.rel_path, result.image_hw, result.instances)
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Write ``data.yaml`` and assemble the COCO JSON."""
        t0 = time.perf_counter()
        if self.cfg.writes_yolo:
            data = self.cfg.data
            kw = {}
            if data.is_dir() and data.name == "images":
                kw = {"path": str(data.parent), "train": "images", "val": "images"}
            atomic_write_text(self.out / "data.yaml", data_yaml_text(self._dense_names(), **kw))
        if self.coco is not None:
            self.coco.close()
        self.seconds += time.perf_counter() - t0

    def abort(self) -> None:
        """Drop the COCO spill files; files already written stay (each is complete)."""
        if self.coco is not None:
            self.coco.abort()

    def _dense_names(self) -> dict[int, str]:
        n = max(self.names) + 1 if self.names else 0
        return {i: self.names.get(i, f"class{i}") for i in range(n)}
