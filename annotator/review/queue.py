"""The review queue: the images of a finished run ordered by how much they need a human look.

The written frames of finished videos are in it as images (``rel_path`` = ``<video>/<frame:06d>.jpg``, the
``image_path`` column = the frame JPEG), ranked like images.

Orders:

* ``lowest`` (default): lowest ``det_conf x sam_score`` of an image's instances first (one weak mask is
  enough to send an image up); images without instances come last (nothing drawn to check; a miss is
  possible but not scored).
* ``uncertain``: the instance score closest to 0.5 first (neither clearly right nor clearly wrong).

Images named in ``first`` (e.g. those that disagree with a hand-labelled subset, ``annotator eval``) go to
the very top, in the order given; then the images with dropped detections (a detection that gave no label row:
too small, low SAM score, empty mask; see :class:`annotator.records.DropReason`), most dropped first: an
object may be missing from their labels. Then the order above. The queue holds one small row per image, never the polygons.

Example:
    >>> rows = review_order(open_finished("runs/street"))  # doctest: +SKIP
    >>> rows[0].rel_path, rows[0].score  # doctest: +SKIP
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from annotator.csv_text import csv_writer
from annotator.finished import FinishedImage, FinishedRun

ORDERS = ("lowest", "uncertain")


@dataclass(frozen=True)
class QueueRow:
    """One image of the queue: its key, the score it was ranked by, and its weakest instance."""

    rel_path: str
    score: float
    instances: int
    weakest_class: str
    weakest_det_conf: float
    weakest_sam_score: float
    #: the image file (a video frame's: the frame JPEG the run wrote)
    path: Path
    #: detections of the image that gave no label row (all reasons together)
    dropped: int = 0


def _row(img: FinishedImage, names: dict[int, str], order: str) -> QueueRow:
    if not img.instances:
        return QueueRow(img.rel_path, 1.0 if order == "lowest" else 0.5, 0, "", 1.0, 1.0, img.path, img.dropped_total)
    key = (lambda i: i.det_conf * i.sam_score) if order == "lowest" else (lambda i: abs(i.det_conf * i.sam_score - 0.5))
    weakest = min(img.instances, key=key)
    return QueueRow(
        img.rel_path, round(key(weakest), 6), len(img.instances), names.get(weakest.class_id, str(weakest.class_id)),
        round(weakest.det_conf, 6), round(weakest.sam_score, 6), img.path, img.dropped_total,
    )  # fmt: skip


def review_order(run: FinishedRun, *, order: str = "lowest", first: Sequence[str] = ()) -> list[QueueRow]:
    """The run's processed images, most in need of review first (see the module docstring)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    rows = [_row(img, run.names, order) for img in run.images()]
    top = {rel: k for k, rel in enumerate(first)}
    return sorted(rows, key=lambda r: (top.get(r.rel_path, len(top)), -r.dropped, r.score, r.rel_path))


def write_review_queue(
    run: FinishedRun, dest: Path, *, order: str = "lowest", first: Sequence[str] = (), rows: list[QueueRow] | None = None
) -> Path:
    """``dest/review_queue.csv``: ``rank, rel_path, image_path, score, instances, weakest_class,
    weakest_det_conf, weakest_sam_score, dropped``, one row per image, in review order (``rows``: :func:`review_order`'s
    result when the caller has it already)."""
    from annotator.io_atomic import atomic_write_text

    buf = io.StringIO()
    w = csv_writer(buf)  # any name stays one field (annotator/csv_text.py)
    w.writerow(["rank", "rel_path", "image_path", "score", "instances", "weakest_class", "weakest_det_conf", "weakest_sam_score", "dropped"])
    for k, r in enumerate(rows if rows is not None else review_order(run, order=order, first=first), 1):
        w.writerow([k, r.rel_path, str(r.path), r.score, r.instances, r.weakest_class,
                    r.weakest_det_conf, r.weakest_sam_score, r.dropped])  # fmt: skip
    path = Path(dest) / "review_queue.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue(), root=path.parent)
    return path
