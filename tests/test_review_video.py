"""Review exports of a run with a video: the written frames are reviewed as images, with their track ids.

The run is built as in ``tests/test_video_pipeline.py`` (the ground-truth stand-in tracker, one synthetic video
beside one image; track 1 reports a wrong class on its first frames, so the exports must use the final vote).
Checked: :meth:`FinishedRun.images`, Label Studio ``tasks.json``, CVAT COCO + XML (parsed, and imported with
datumaro), ``review_queue.csv`` and the review page's data (and the page
rendered by Chromium, filtered by video).
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from annotator.synthetic_video import CountingDetector, write_shapes_video
from tests.test_incremental import write_images
from tests.test_video_pipeline import ByShapeTracker, _run

VIDEO = "clips/a.avi"
GT_CLASS = {1: 0, 2: 1, 3: 2}  # the synthetic video's tracks -> their true class (circle, rectangle, triangle)
STRIDE = 3


def _annotate(root: Path, det, sam, *, sibling: bool) -> SimpleNamespace:
    from annotator.finished import open_finished

    data = root / ("images" if sibling else "data")
    write_images(data, [5], sub=False)
    video = write_shapes_video(data / VIDEO, n_frames=30, image_hw=(96, 128))
    out = root / ("labels" if sibling else "out")
    tracker = ByShapeTracker([video], wrong_class_frames=4)
    s = _run(data, out, det, sam, tracker, CountingDetector(), format="both", frame_stride=STRIDE)
    assert {v["rel_path"]: v["status"] for v in s.videos} == {VIDEO: "ok"}
    return SimpleNamespace(run=open_finished(out), video=video, out=out, data=data)


@pytest.fixture(scope="module")
def made(tmp_path_factory, shapes_detector, sam2_t_ckpt):
    return _annotate(tmp_path_factory.mktemp("review_video"), shapes_detector, sam2_t_ckpt, sibling=False)


def _frames(run):
    return [img for img in run.images() if img.video is not None]


def test_finished_run_lists_frames_with_tracks_and_final_classes(made):
    imgs = list(made.run.images())
    assert [i.rel_path for i in imgs if i.video is None] == ["img5.png"]
    frames = _frames(made.run)
    assert [f.frame_index for f in frames] == list(range(0, 30, STRIDE))
    for f in frames:
        assert f.rel_path == f"{VIDEO}/{f.frame_index:06d}.jpg" and f.video == VIDEO
        assert f.path == made.out / "images" / VIDEO / f"{f.frame_index:06d}.jpg" and f.path.is_file()
        assert f.image_hw == (96, 128) and f.status == ("ok" if f.instances else "empty")
        gt = {o.track_id for o in made.video.objects(f.frame_index)}
        assert {i.track_id for i in f.instances} <= gt and len(f.instances) >= len(gt) - 1
        assert all(i.class_id == GT_CLASS[i.track_id] for i in f.instances)  # the vote, also on the first frames
        # the same classes as the frame's YOLO label file
        rows = (made.out / "labels" / VIDEO / f"{f.frame_index:06d}.txt").read_text().splitlines()
        assert sorted(int(r.split()[0]) for r in rows) == sorted(i.class_id for i in f.instances)
    assert {i.track_id for f in frames for i in f.instances} == {1, 2, 3}


def test_labelstudio_tasks_carry_video_frame_and_track(made, tmp_path):
    from annotator.review.exports import export_all

    written = export_all(made.run, ["labelstudio"], dest=tmp_path / "ls")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    frames = {f.rel_path: f for f in _frames(made.run)}
    by_rel = {t["data"]["rel_path"]: t for t in tasks}
    assert set(by_rel) == set(frames) | {"img5.png"}
    assert "video" not in by_rel["img5.png"]["data"] and "frame_index" not in by_rel["img5.png"]["data"]
    for rel, f in frames.items():
        t = by_rel[rel]
        assert t["data"]["video"] == VIDEO and t["data"]["frame_index"] == f.frame_index
        # the frame JPEG the run wrote, as a local-files URL (it does not lie under the data folder)
        assert t["data"]["image"] == "/data/local-files/?d=" + f.path.as_posix().lstrip("/")
        regions = t["predictions"][0]["result"]
        objects = {r["meta"]["object"]: r for r in regions}
        assert len(objects) == len(f.instances)
        for k, inst in enumerate(f.instances):
            r = objects[k]
            assert r["meta"]["track_id"] == inst.track_id and f"track {inst.track_id}" in r["meta"]["text"][0]
            assert r["value"]["polygonlabels"] == [made.run.names[GT_CLASS[inst.track_id]]]
    # the queue ranks frames like images; a frame's image_path is its JPEG
    rows = list(csv.DictReader(open(written[-1], encoding="utf-8")))
    assert len(rows) == len(tasks) and [float(r["score"]) for r in rows] == sorted(float(r["score"]) for r in rows)
    for r in rows:
        want = frames[r["rel_path"]].path if r["rel_path"] in frames else made.data / r["rel_path"]
        assert r["image_path"] == str(want)
    # with an image root, frames are addressed by their rel path under it (dataset layout: OUT/images holds both)
    export_all(made.run, ["labelstudio"], dest=tmp_path / "ls2", image_root="http://host/images/")
    tasks2 = json.loads((tmp_path / "ls2" / "tasks.json").read_text())
    urls = {t["data"]["rel_path"]: t["data"]["image"] for t in tasks2}
    assert all(urls[rel] == f"http://host/images/{rel}" for rel in frames)


def _xml_tracks(xml_path: Path) -> tuple[dict[str, list[tuple[str, int | None]]], set[str]]:
    root = ET.parse(xml_path).getroot()
    declared = {
        a.findtext("name") for lab in root.iter("label") for a in lab.iter("attribute") if a.findtext("name")
    }
    got = {}
    for im in root.iter("image"):
        got[im.get("name")] = [
            (p.get("label"), next((int(a.text) for a in p.iter("attribute") if a.get("name") == "track_id"), None))
            for p in im.iter("polygon")
        ]
    return got, declared


def test_cvat_coco_and_xml_carry_track_ids(made, tmp_path):
    from annotator.review.cvat import COCO_PATH, LABELS_PATH, XML_PATH, export_cvat

    dest = tmp_path / "cvat"
    export_cvat(made.run, dest, style="both", images="copy")
    frames = {f.rel_path: f for f in _frames(made.run)}
    names = made.run.names
    want = {
        rel: sorted((names[i.class_id], i.track_id) for i in f.instances for _ in i.polygons_xy_px)
        for rel, f in frames.items()
    }
    # COCO 1.0: attributes.track_id on every frame annotation, none on the image's
    coco = json.loads((dest / COCO_PATH).read_text())
    file_of = {im["id"]: im["file_name"] for im in coco["images"]}
    assert set(file_of.values()) == set(frames) | {"img5.png"}
    got: dict[str, list] = {rel: [] for rel in file_of.values()}
    for a in coco["annotations"]:
        got[file_of[a["image_id"]]].append((names[a["category_id"] - 1], a["attributes"].get("track_id")))
        assert a["attributes"].get("track_id") == a.get("track_id")
    assert got["img5.png"] == [] or all(t is None for _, t in got["img5.png"])
    for rel, f in frames.items():
        assert sorted(got[rel]) == sorted((names[i.class_id], i.track_id) for i in f.instances)
    # CVAT for images 1.1: a track_id attribute per frame polygon (one per part), declared on every label
    xml, declared = _xml_tracks(dest / XML_PATH)
    assert {"score", "det_conf", "sam_score", "track_id"} <= declared
    assert all(t is None for _, t in xml["img5.png"])
    for rel in frames:
        assert sorted(xml[rel]) == want[rel]
    spec = json.loads((dest / LABELS_PATH).read_text())
    track_specs = [next(a for a in lab["attributes"] if a["name"] == "track_id") for lab in spec]
    assert len(track_specs) == 3 and all(a["values"] == ["0", "3", "1"] for a in track_specs)
    # the frames were copied under their rel path (a dataset CVAT / datumaro can import)
    assert all((dest / "images" / rel).is_file() for rel in frames)

    from tests.test_export_cvat import _datumaro_python, _datumaro_read  # builds datumaro's venv once if missing

    python = _datumaro_python()
    for fmt in ("coco_instances", "cvat"):
        read = _datumaro_read(python, dest, fmt)
        items = {it["id"]: it for it in read["items"]}
        for rel in frames:
            anns = items[rel[: -len(".jpg")]]["annotations"]
            assert sorted((a["label"], a["attributes"].get("track_id")) for a in anns) == want[rel], (fmt, rel)


def _page_items(dest: Path) -> list[dict]:
    items = []
    for p in sorted((dest / "data").glob("page-*.js")):
        body = re.match(r"reviewPage\(\d+,(.*)\);\s*$", p.read_text(), re.S).group(1)
        items += json.loads(body)
    return items


def test_review_page_shows_tracks_and_filters_by_video(made, tmp_path):
    from annotator.review.page import write_review_page

    dest = tmp_path / "page"
    index = write_review_page(made.run, dest, per_page=4)
    found = re.search(r'<script id="meta" type="application/json">(.*?)</script>', index.read_text())
    meta = json.loads(found.group(1))
    assert meta["videos"] == [VIDEO] and meta["n_images"] == 11
    assert all(len(p) == 4 for p in meta["pages"])  # score range, classes, videos on the page
    items = {it["r"]: it for it in _page_items(dest)}
    frames = {f.rel_path: f for f in _frames(made.run)}
    assert "v" not in items["img5.png"] and all(len(x) == 4 for x in items["img5.png"]["i"])
    for rel, f in frames.items():
        it = items[rel]
        assert it["v"] == VIDEO and it["f"] == f.frame_index
        assert (dest / it["src"]).resolve() == f.path.resolve()
        assert [(x[0], x[4]) for x in it["i"]] == [(i.class_id, i.track_id) for i in f.instances]

    from tests.test_review_page import browse  # skips without chromium; fails under CI


    html = browse(index.as_uri() + "#video=" + VIDEO.replace("/", "%2F"), "--dump-dom")
    cards = re.findall(r'<div class="card"[^>]*>', html)
    assert cards and all(f'data-video="{VIDEO}"' in c for c in cards)
    shown = {f.rel_path for f in frames.values()} & set(re.findall(r'data-rel="([^"]+)"', html))
    assert len(shown) == len(cards)
    tracks = re.findall(r'data-track="(\d+)"', html)
    assert tracks and set(tracks) <= {"1", "2", "3"} and "track " in html


def test_sibling_layout_frames_point_into_video_frames(tmp_path, shapes_detector, sam2_t_ckpt):
    made = _annotate(tmp_path / "X", shapes_detector, sam2_t_ckpt, sibling=True)
    assert made.run.sibling_layout
    frames = _frames(made.run)
    assert len(frames) == 10
    for f in frames:
        assert f.path == made.out / "video_frames" / "images" / VIDEO / f"{f.frame_index:06d}.jpg" and f.path.is_file()
        assert all(i.class_id == GT_CLASS[i.track_id] for i in f.instances)
    from annotator.review.exports import export_all

    export_all(made.run, ["labelstudio", "cvat"], dest=tmp_path / "x", cvat_images="copy")
    tasks = {t["data"]["rel_path"]: t for t in json.loads((tmp_path / "x" / "labelstudio" / "tasks.json").read_text())}
    for f in frames:
        assert tasks[f.rel_path]["data"]["image"].endswith("/labels/video_frames/images/" + f.rel_path)
        assert (tmp_path / "x" / "cvat" / "images" / f.rel_path).read_bytes() == f.path.read_bytes()
    assert tasks["img5.png"]["data"]["image"].endswith("/X/images/img5.png")


def test_cli_export_and_review_include_frames(made, tmp_path):
    from annotator.cli import main

    assert main(["export", str(made.out), "--to", "labelstudio", "cvat", "--dest", str(tmp_path / "x")]) == 0
    assert main(["review", str(made.out), "--dest", str(tmp_path / "page"), "--per-page", "50"]) == 0
    frames = {f.rel_path for f in _frames(made.run)}
    tasks = json.loads((tmp_path / "x" / "labelstudio" / "tasks.json").read_text())
    assert frames <= {t["data"]["rel_path"] for t in tasks}
    for tool in ("labelstudio", "cvat"):
        rows = list(csv.DictReader(open(tmp_path / "x" / tool / "review_queue.csv", encoding="utf-8")))
        assert {r["rel_path"] for r in rows} == frames | {"img5.png"}
    xml, _ = _xml_tracks(tmp_path / "x" / "cvat" / "annotations.xml")
    assert {t for rel in frames for _, t in xml[rel]} == {1, 2, 3}
    items = _page_items(tmp_path / "page")
    assert {it["r"] for it in items if "v" in it} == frames
