"""Nothing vanishes silently: every detection that gives no label row is counted by reason, in the summary,
``run_report.json``, the ledger and the review queue (which puts images with drops first).

Real CLI runs (``python -m annotator``) with ``prompts: boxes``: every box row is one detection, so the count
``instances written + dropped == label rows handed in`` must hold whatever the (random) SAM masks are; a
``--min-area-px`` larger than any image makes every box a drop, deterministically.
"""

from __future__ import annotations

import csv
import json
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annotator.ledger import Ledger
from annotator.records import DROP_REASONS, DropReason, ImageResult, ImageStatus, MaskCrop, SourceItem
from annotator.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow


def _box_row(line: str) -> str:
    v = line.split()
    xy = np.asarray(v[1:], float).reshape(-1, 2)
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    return f"{v[0]} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}"


@pytest.fixture(scope="module")
def boxes_ds(tmp_path_factory) -> tuple[Path, dict[str, int], dict[str, int]]:
    """``images/0000.jpg``: polygon rows only (kept as they are, never dropped); ``images/0001.jpg``: its
    objects as box rows plus a 1x1-pixel box (SAM prompts). Returns the root, box rows and all rows per image."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("drop") / "ds", 2, seed=5, image_hw=(96, 128),
                                   n_objects=(2, 3), empty_fraction=0.0, subdirs=("",))  # fmt: skip
    rows, boxes = {}, {}
    for txt in sorted((root / "labels").glob("*.txt")):
        lines = [ln for ln in txt.read_text().splitlines() if ln.split()]
        if txt.stem == "0001":
            lines = [_box_row(ln) for ln in lines] + ["0 0.5 0.5 0.0078 0.0104"]  # the last: 1 x 1 pixel
            txt.write_text("\n".join(lines) + "\n")
            boxes[f"{txt.stem}.jpg"] = len(lines)
        else:
            boxes[f"{txt.stem}.jpg"] = 0
        rows[f"{txt.stem}.jpg"] = len(lines)
    return root, boxes, rows


def _annotate(root: Path, sam: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "annotator", "annotate", str(root / "images"), "--prompts", "boxes",
           "--sam-model", str(sam), "--device", "cpu", "--output-dir", str(out), "--torch-threads", "1", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _ledger_dropped(out: Path) -> dict[str, dict]:
    db = sqlite3.connect(out / ".annotator" / "ledger.sqlite")
    try:
        return {rel: json.loads(d) for rel, d in db.execute("SELECT rel_path, dropped_json FROM items")}
    finally:
        db.close()


def test_every_box_is_a_label_row_or_a_counted_drop(boxes_ds, sam2_t_ckpt, tmp_path):
    root, boxes, rows = boxes_ds
    out = tmp_path / "default"
    p = _annotate(root, sam2_t_ckpt, out, "--sam-min-score", "0.5")  # default min_area_px
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "run_report.json").read_text())["summary"]
    per_image = _ledger_dropped(out)
    assert set(summary["dropped"]) <= set(DROP_REASONS)
    assert summary["instances"] + summary["dropped_total"] == sum(rows.values())  # every row accounted for
    totals: dict[str, int] = {}
    for d in per_image.values():
        for k, v in d.items():
            totals[k] = totals.get(k, 0) + v
    assert totals == summary["dropped"]
    assert summary["images_with_drops"] == sum(bool(d) for d in per_image.values())
    assert per_image["0000.jpg"] == {}  # kept polygon rows are never dropped
    for rel in rows:  # per image: its label file rows + its drops = the rows handed in
        written = len((out / "labels" / rel).with_suffix(".txt").read_text().splitlines())
        assert written + sum(per_image[rel].values()) == rows[rel], rel
    if summary["dropped_total"]:
        assert f"{summary['dropped_total']} detections dropped" in p.stdout.strip().splitlines()[-1]


def test_all_boxes_under_min_area_are_counted_and_reviewed_first(boxes_ds, sam2_t_ckpt, tmp_path):
    root, boxes, rows = boxes_ds
    out = tmp_path / "huge"
    p = _annotate(root, sam2_t_ckpt, out, "--sam-min-score", "0", "--min-area-px", "1000000")
    assert p.returncode == 0, p.stderr
    report = json.loads((out / "run_report.json").read_text())["summary"]
    dropped = report["dropped"]
    assert report["dropped_total"] == boxes["0001.jpg"] == sum(dropped.values())
    # random SAM 2 weights: blobs (too small) or specks and lines (degenerate); which one is the unit test's
    assert set(dropped) <= {DropReason.MIN_AREA.value, DropReason.DEGENERATE.value, DropReason.EMPTY_MASK.value}
    assert report["images_with_drops"] == 1 and report["status_counts"] == {"ok": 1, "empty": 1}
    assert sum(_ledger_dropped(out)["0001.jpg"].values()) == boxes["0001.jpg"]
    line = p.stdout.strip().splitlines()[-1]
    assert f"{boxes['0001.jpg']} detections dropped in 1 images" in line

    r = subprocess.run([sys.executable, "-m", "annotator", "export", str(out), "--to", "cvat", "--dest",
                        str(tmp_path / "rv")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    queue = list(csv.DictReader((tmp_path / "rv" / "review_queue.csv").open(encoding="utf-8")))
    # without drops 0000.jpg (kept polygons, score 1) and 0001.jpg (no instance, score 1) tie: name order
    assert [q["rel_path"] for q in queue] == ["0001.jpg", "0000.jpg"]
    assert [int(q["dropped"]) for q in queue] == [boxes["0001.jpg"], 0]
    r = subprocess.run([sys.executable, "-m", "annotator", "review", str(out), "--dest", str(tmp_path / "page")],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    js = (tmp_path / "page" / "data" / "page-0001.js").read_text()  # reviewPage(1,[{...},{...}]);
    items = json.loads(js[js.index("[") : js.rindex("]") + 1])
    assert {it["r"]: it.get("dr", 0) for it in items} == {"0001.jpg": boxes["0001.jpg"], "0000.jpg": 0}


def test_old_ledger_gains_the_column_and_reads_unknown_as_none(tmp_path):
    """A ledger written before drops were counted: opened, migrated in place, old rows read as no drops."""
    (tmp_path / ".annotator").mkdir()
    db = sqlite3.connect(tmp_path / ".annotator" / "ledger.sqlite")
    db.executescript(
        "CREATE TABLE items (rel_path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT,"
        " model_fp TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', instances INTEGER NOT NULL"
        " DEFAULT 0, seconds REAL NOT NULL DEFAULT 0, image_h INTEGER, image_w INTEGER, result_json TEXT,"
        " updated_at REAL NOT NULL);"
        "INSERT INTO items VALUES ('old.jpg', 1, 2, NULL, 'fp', 'empty', '', 0, 0.0, 8, 8, '[]', 0.0);"
    )
    db.commit()
    db.close()
    led = Ledger(tmp_path)
    try:
        assert led.get("old.jpg").dropped == {}
        from annotator.ledger import FileStat

        item = SourceItem(tmp_path / "new.jpg", "new.jpg")
        led.record(ImageResult(item, ImageStatus.EMPTY, (8, 8), dropped={"empty_mask": 2}), FileStat(1, 2), "fp")
        assert led.get("new.jpg").dropped == {"empty_mask": 2}
        assert led.db.execute("PRAGMA user_version").fetchone()[0] >= 2
    finally:
        led.close()
    Ledger(tmp_path).close()  # a second open is a no-op
    db = sqlite3.connect(tmp_path / ".annotator" / "ledger.sqlite")  # a videos table of schema 1
    db.execute("CREATE TABLE videos (rel_path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
               " sha256 TEXT, video_fp TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',"
               " frames_read INTEGER NOT NULL DEFAULT 0, frames_written INTEGER NOT NULL DEFAULT 0, tracks INTEGER"
               " NOT NULL DEFAULT 0, instances INTEGER NOT NULL DEFAULT 0, seconds REAL NOT NULL DEFAULT 0, image_h"
               " INTEGER, image_w INTEGER, tracks_json TEXT, updated_at REAL NOT NULL)")  # fmt: skip
    db.commit()
    db.close()
    from annotator.video.ledger import VideoLedger

    led = Ledger(tmp_path)
    try:
        VideoLedger(led)
        assert "dropped_json" in {r[1] for r in led.db.execute("PRAGMA table_info(videos)")}
    finally:
        led.close()


def test_result_record_carries_drops_through_ray_rows():
    """The Ray engine moves ``ImageResult`` s as pickled rows of an Arrow table: ``dropped`` survives."""
    pytest.importorskip("pyarrow")
    from pipelines import ray_tasks

    res = ImageResult(SourceItem(Path("/x/a.jpg"), "a.jpg"), ImageStatus.EMPTY, (4, 4), dropped={"below_min_area_px": 3})
    assert pickle.loads(pickle.dumps(res)).dropped == {"below_min_area_px": 3}
    [(i, back)] = list(ray_tasks.image_results(ray_tasks._image_table([7], [res])))
    assert i == 7 and back.dropped == {"below_min_area_px": 3} and back == res


@pytest.mark.parametrize(
    ("blob", "min_area", "reason"),
    [
        (np.zeros((5, 5), bool), 4.0, DropReason.EMPTY_MASK),
        (np.pad(np.ones((2, 2), bool), 3), 4.0, DropReason.MIN_AREA),  # 2x2 blob: polygon area 1
        (np.pad(np.ones((1, 6), bool), 3), 4.0, DropReason.DEGENERATE),  # a 1-pixel line: no area at all
        (np.pad(np.ones((1, 6), bool), 3), 0.0, DropReason.DEGENERATE),
    ],
)
def test_polygonizer_names_the_reason(blob, min_area, reason):
    from annotator.polygons import Polygonizer
    from annotator.records import Instance

    poly = Polygonizer(min_area_px=min_area)
    inst = Instance(1, 0.9, np.zeros(4, np.float32), 0.9, MaskCrop.from_full(blob), 0)
    dropped: dict[str, int] = {}
    assert poly([inst, inst], dropped) == []
    assert dropped == {reason.value: 2}


def test_kept_label_polygon_without_area_is_counted_not_written():
    """``prompts: boxes`` keeps polygon rows as they are; one whose vertices coincide gives no row and is counted."""
    from annotator.polygons import Polygonizer
    from annotator.records import Detections, PolygonInstance
    from annotator.stages import CpuSteps, InferredImage

    good = PolygonInstance(0, 1.0, 1.0, [np.array([[1, 1], [9, 1], [9, 9]], float)], 32, (1, 1, 8, 8))
    flat = PolygonInstance(1, 1.0, 1.0, [np.array([[5, 5], [5, 5], [5, 5]], float)], 0, (5, 5, 0, 0))
    x = InferredImage(SourceItem(Path("/x/a.jpg"), "a.jpg"), (16, 16), Detections.empty(), kept=(good, flat))
    res = CpuSteps(None, Polygonizer()).finish(x)
    assert res.instances == (good,) and res.dropped == {DropReason.DEGENERATE.value: 1}


def test_video_result_drops_reach_the_video_ledger(tmp_path):
    from annotator.ledger import FileStat
    from annotator.video.ledger import VideoLedger
    from annotator.video.pipeline import VideoResult

    led = Ledger(tmp_path)
    try:
        vids = VideoLedger(led)
        vids.begin("a.mp4", FileStat(10, 1), "fp")
        vids.finish(**VideoResult("a.mp4", "ok", frames_read=3, frames_written=3, dropped={"empty_mask": 4}).to_dict())
        [(text,)] = led.db.execute("SELECT dropped_json FROM videos").fetchall()
        assert json.loads(text) == {"empty_mask": 4}
    finally:
        led.close()
