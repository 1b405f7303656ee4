"""The summary a run returns (API), prints (CLI) and saves (``run_report.json``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from annotator.records import DROP_REASONS, ImageResult, ImageStatus

_PROCESSED = (ImageStatus.OK, ImageStatus.EMPTY)


@dataclass
class RunSummary:
    """Counts, output paths and timings of one run.

    Attributes:
        images_seen: inputs found (refused symlinks and the like are listed in ``refused``, not counted).
        annotated: images with at least one instance written.
        empty: images processed with no instance (an empty label file is written).
        failed: images that could not be processed (any other status); see ``failures``.
        instances_per_class: class name -> instances written.
        status_counts: status value -> images.
        output_dir, labels_dir, data_yaml, coco_json, scores_csv: what was written (None when not written).
        seconds_per_stage: wall seconds summed over images per stage (decode, detect, segment, polygonize, write).
        elapsed_s: wall seconds of the whole run, model loading included.
        images_per_s: ``images_seen / processing seconds`` (model loading excluded).
        failures: ``{"path", "status", "reason"}`` per failed image.
        label_collisions: image paths whose YOLO label file would be shared with another image
            (``a.jpg`` + ``a.png``); no label is written for them (COCO keeps them).
        refused: ``{"path", "reason"}`` for inputs refused while scanning (e.g. a symlink leaving ``data``).
        unchanged: inputs skipped because the ledger holds a current result for them (incremental runs).
        removed: inputs deleted since the last run whose labels were removed.
        report_json: the ``run_report.json`` written beside the outputs.
        exports: review files written after the run (``exports`` setting).
        videos: one ``{"rel_path", "status", "reason", "frames_read", "frames_written", "tracks", "instances",
            "seconds"}`` per video labelled (or refused) by this run; ``videos_unchanged``: finished videos
            skipped; ``videos_removed``: videos deleted since the last run whose outputs were removed.
        dropped: detections that did not become a label row, by reason (:data:`annotator.records.DROP_REASONS`),
            summed over this run's images and videos, e.g. ``{"below_min_area_px": 3}`` (only non-zero counts);
            ``images_with_drops``: images (and video frames' videos) of this run with at least one.
        splits: labelled images (video frames included) per split as ``data.yaml`` lists them, e.g. ``{"train": 90,
            "val": 10}``; empty when no split is in effect (``split: {val: 0}`` or too few images: val = train).
        engine_stats: figures the engine measured (local: ``model_busy_s``, ``model_thread_s``, the share of
            the model thread's time spent in model calls).
    """

    images_seen: int = 0
    annotated: int = 0
    empty: int = 0
    failed: int = 0
    instances_per_class: dict[str, int] = field(default_factory=dict)
    status_counts: dict[str, int] = field(default_factory=dict)
    output_dir: Path | None = None
    labels_dir: Path | None = None
    data_yaml: Path | None = None
    coco_json: Path | None = None
    scores_csv: Path | None = None
    seconds_per_stage: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    processing_s: float = 0.0
    images_per_s: float = 0.0
    failures: list[dict] = field(default_factory=list)
    label_collisions: list[str] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    engine: str = "local"
    unchanged: int = 0
    removed: int = 0
    report_json: Path | None = None
    engine_stats: dict = field(default_factory=dict)
    exports: list[Path] = field(default_factory=list)
    videos: list[dict] = field(default_factory=list)
    videos_unchanged: int = 0
    videos_removed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    images_with_drops: int = 0
    splits: dict[str, int] = field(default_factory=dict)

    @property
    def instances(self) -> int:
        return sum(self.instances_per_class.values())

    @property
    def videos_failed(self) -> int:
        """Videos of this run not labelled whole (any status but ok / empty: decode_error, truncated, ...)."""
        return sum(v["status"] not in ("ok", "empty") for v in self.videos)

    def add(self, result: ImageResult, names: dict[int, str]) -> None:
        """Count one image's result."""
        self.images_seen += 1
        self.status_counts[result.status.value] = self.status_counts.get(result.status.value, 0) + 1
        if result.status == ImageStatus.OK:
            self.annotated += 1
        elif result.status == ImageStatus.EMPTY:
            self.empty += 1
        else:
            self.failed += 1
            self.failures.append({"path": result.item.rel_path, "status": result.status.value, "reason": result.reason})
        counts = Counter(names.get(i.class_id, str(i.class_id)) for i in result.instances)
        for k, v in counts.items():
            self.instances_per_class[k] = self.instances_per_class.get(k, 0) + v
        for stage, s in result.seconds.items():
            self.seconds_per_stage[stage] = self.seconds_per_stage.get(stage, 0.0) + s
        self.add_dropped(result.dropped)

    def add_dropped(self, dropped: dict[str, int]) -> None:
        """Count one image's (or one video's) ``{reason: n}`` dropped detections."""
        if any(dropped.values()):
            self.images_with_drops += 1
        for reason, n in dropped.items():
            if n:
                self.dropped[reason] = self.dropped.get(reason, 0) + int(n)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
        d["exports"] = [str(p) for p in self.exports]
        d["instances"] = self.instances
        d["dropped"] = {r: self.dropped[r] for r in DROP_REASONS if self.dropped.get(r)}
        d["dropped_total"] = self.dropped_total
        d["seconds_per_stage"] = {k: round(v, 4) for k, v in self.seconds_per_stage.items()}
        return d

    def one_line(self) -> str:
        """The last line a scheduler's log shows: counts and throughput."""
        extra = f", {self.unchanged} unchanged" if self.unchanged else ""
        extra += f", {self.removed} removed" if self.removed else ""
        line = (
            f"{self.images_seen} images: {self.annotated} annotated, {self.empty} empty, {self.failed} failed"
            f"{extra}; {self.instances} instances"
        )
        if self.dropped_total:
            line += f" ({self.dropped_total} detections dropped in {self.images_with_drops} images: " + ", ".join(
                f"{self.dropped[r]} {r}" for r in DROP_REASONS if self.dropped.get(r)) + ")"  # fmt: skip
        line += f"; {self.images_per_s:.2f} images/s"
        if self.videos or self.videos_unchanged:
            frames = sum(v["frames_written"] for v in self.videos)
            line += (f"; {len(self.videos)} videos ({frames} frames, {self.videos_failed} not ok), "
                     f"{self.videos_unchanged} unchanged")  # fmt: skip
        return line

    def __str__(self) -> str:  # pragma: no cover - presentation
        return self.one_line()
