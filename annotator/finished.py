"""A finished output folder, read back without running a model: what review exports and evaluation start from.

An output folder holds ``run_report.json`` (the settings and models of the last run) and the ledger
(``.annotator/ledger.sqlite``: every processed image's instances, lossless). :func:`open_finished` reads both;
:meth:`FinishedRun.images` streams the processed images in input order, then the written frames of the finished
videos (``annotator/video/``), each frame as one image (memory stays flat).

Example:
    >>> run = open_finished("runs/sample")  # doctest: +SKIP
    >>> run.names, run.data_root  # doctest: +SKIP
    ({0: 'circle', 1: 'rectangle', 2: 'triangle'}, PosixPath('.../sample_data/shapes/images'))
    >>> for img in run.images():  # doctest: +SKIP
    ...     img.rel_path, img.image_hw, [i.class_id for i in img.instances]
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from annotator.errors import ConfigError
from annotator.records import ImageStatus, PolygonInstance

_PROCESSED = (ImageStatus.OK.value, ImageStatus.EMPTY.value)


@dataclass(frozen=True)
class FinishedImage:
    """One processed input of a finished run.

    Attributes:
        rel_path: POSIX path relative to the run's data root (the image's stable key, sub-folders kept); for a
            video frame, the frame's COCO ``file_name``: ``<video rel>/<frame_index:06d>.jpg``, relative to the
            frames' ``images/`` folder (:class:`annotator.video.layout.VideoLayout`).
        path: absolute path of the input image (of a video frame: the frame JPEG the run wrote).
        image_hw: ``(height, width)`` in pixels (EXIF-upright, as labelled).
        status: ``"ok"`` or ``"empty"``.
        instances: polygons in pixels with class id, detector confidence and SAM score (lossless); a video
            frame's carry ``track_id`` and their track's final class (the vote, as in the frame's label file).
        video: a video frame's video (its path relative to the data root); None for an image.
        frame_index: a video frame's source frame number (from 0); None for an image.
        dropped: the image's detections that gave no label row, by reason (``{"below_min_area_px": 1}``; empty
            for none, for a video frame and for a ledger row written before drops were counted).
    """

    rel_path: str
    path: Path
    image_hw: tuple[int, int]
    status: str
    instances: tuple[PolygonInstance, ...]
    video: str | None = None
    frame_index: int | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def review_score(self) -> float:
        """How sure the models are about this image, in ``[0, 1]``: the lowest ``det_conf x sam_score`` of its
        instances (1.0 for an image without any: nothing to check but a possible miss). Lower = review first."""
        return min((i.det_conf * i.sam_score for i in self.instances), default=1.0)


@dataclass(frozen=True)
class FinishedRun:
    """Settings, models and ledger of a finished output folder (see :func:`open_finished`).

    Attributes:
        output_dir: the folder.
        data_root: the run's input folder (a single-image or ``.txt`` input: that file's folder).
        names: detector class id -> name, dense ``0..max`` (``class<i>`` for ids the detector did not name).
        det_model, sam_model: the weight files used, as ``{"path", "sha256"}`` (+ ``architecture`` for SAM).
        settings: the run's settings as written in ``run_report.json``.
    """

    output_dir: Path
    data_root: Path
    names: dict[int, str]
    det_model: dict
    sam_model: dict
    settings: dict = field(repr=False, default_factory=dict)

    @property
    def model_version(self) -> str:
        """The models with the first 12 hex digits of their SHA-256, e.g. ``yolo11x.pt@1a2b3c4d5e6f+sam2_b.pt@...``."""
        parts = []
        for m in (self.det_model, self.sam_model):
            name = Path(str(m.get("path", "?"))).name
            sha = str(m.get("sha256") or "")[:12]
            parts.append(f"{name}@{sha}" if sha else name)
        return "+".join(parts)

    @property
    def sibling_layout(self) -> bool:
        """True when the run wrote its label files straight into its output folder: ``X/labels`` beside its input
        ``X/images``, or ``flat_labels`` (as ``AnnotateConfig.is_sibling_layout``)."""
        if self.settings.get("flat_labels"):
            return True
        data, out = Path(self.settings.get("data", "")), self.settings.get("output_dir")
        return data.name == "images" and out is not None and Path(out) == data.parent / "labels"

    def images(self) -> Iterator[FinishedImage]:
        """Every processed image (``ok`` or ``empty``) in input order (sorted by ``rel_path``), then every written
        frame of the finished videos (video order, then frame order; ``video`` / ``frame_index`` set), streamed."""
        from annotator.ledger import Ledger, instances_from_json

        ledger = Ledger(self.output_dir)
        try:
            for row in ledger.rows():  # one query, ordered by rel_path
                if row.status not in _PROCESSED or row.image_hw is None:
                    continue
                rel = row.rel_path
                yield FinishedImage(rel, self.data_root / rel, row.image_hw, row.status,
                                    instances_from_json(row.result_json), dropped=row.dropped)  # fmt: skip
            yield from self._frames(ledger)
        finally:
            ledger.close()

    def _frames(self, ledger) -> Iterator[FinishedImage]:
        """The written frames of the finished videos (nothing for a ledger without a ``videos`` table)."""
        has_videos = ledger.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='videos'").fetchone()
        if not has_videos:  # an image-only run: leave its ledger as it is (no video tables created)
            return
        from annotator.video.layout import VideoLayout
        from annotator.video.ledger import VideoLedger
        from annotator.video.outputs import frames_in

        layout = VideoLayout(self.output_dir, self.sibling_layout)
        for f in frames_in(layout, ledger, VideoLedger(ledger).rel_paths()):
            status = ImageStatus.OK.value if f.instances else ImageStatus.EMPTY.value
            yield FinishedImage(f.coco_file_name, f.image_path, f.image_hw, status, f.instances, f.video, f.frame_index)


def open_finished(output_dir: str | Path) -> FinishedRun:
    """Read a finished output folder; :class:`ConfigError` (one line) when it is not one."""
    out = Path(output_dir).expanduser().absolute()
    report = out / "run_report.json"
    if not (out / ".annotator").is_dir() or not report.is_file():
        raise ConfigError(
            f"{out} is not an annotator output folder (no run_report.json / .annotator ledger): pass the "
            f"output_dir of a finished 'annotator annotate' run"
        )
    try:
        doc = json.loads(report.read_text(encoding="utf-8"))
        settings, models = doc["settings"], doc["models"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{report} can not be read ({type(e).__name__}: {e}): run the annotate command again") from None
    data = Path(settings["data"])
    data_root = data if data.is_dir() or not data.suffix else data.parent
    return FinishedRun(out, data_root, _names(out), models["det_model"], models["sam_model"], settings)


def _names(out: Path) -> dict[int, str]:
    from annotator.ledger import Ledger

    ledger = Ledger(out)
    try:
        raw = ledger.meta("names")
    finally:
        ledger.close()
    names = {int(k): str(v) for k, v in json.loads(raw)["names"].items()} if raw else {}
    n = max(names) + 1 if names else 0
    return {i: names.get(i, f"class{i}") for i in range(n)}
