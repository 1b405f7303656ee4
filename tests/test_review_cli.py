"""The review commands end to end: exports at annotate time equal ``annotator export`` later, the queue's order,
one-line errors. (Each tool's own import of the files is tested in test_export_labelstudio / _cvat /
test_review_page, with the real programs.)"""

from __future__ import annotations

import csv

import pytest

from annotator.cli import main
from annotator.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, shapes_detector, sam2_t_ckpt):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("rv") / "d", 5, seed=11, image_hw=(160, 160), labels=None)
    out = root.parent / "out"
    rc = main(["annotate", str(root / "images"), "--det-model", str(shapes_detector), "--sam-model", str(sam2_t_ckpt),
               "--device", "cpu", "--output-dir", str(out), "--sam-min-score", "0", "--quiet",
               "--export", "labelstudio", "cvat", "page"])  # fmt: skip
    assert rc == 0
    return out


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_exports_at_annotate_time_equal_the_export_command(annotated, tmp_path):
    review = annotated / "review"
    assert (review / "labelstudio" / "tasks.json").is_file() and (review / "labelstudio" / "labeling_config.xml").is_file()
    assert (review / "cvat" / "annotations.xml").is_file()
    assert (review / "cvat" / "annotations" / "instances_default.json").is_file()
    assert (review / "page" / "index.html").is_file()
    assert main(["export", str(annotated), "--to", "labelstudio", "cvat", "--dest", str(tmp_path / "later")]) == 0
    for tool in ("labelstudio", "cvat"):
        assert _files(tmp_path / "later" / tool) == _files(review / tool), tool
    assert main(["review", str(annotated), "--dest", str(tmp_path / "page"), "--per-page", "2"]) == 0
    assert len(list((tmp_path / "page" / "data").glob("page-*.js"))) == 3  # 5 images, 2 per page


def test_review_queue_orders_by_weakest_instance(annotated):
    from annotator.finished import open_finished

    rows = list(csv.DictReader((annotated / "review" / "cvat" / "review_queue.csv").open()))
    run = open_finished(annotated)
    by_queue = {r["rel_path"]: r for r in rows}
    # images with dropped detections first (most first), then the weakest instance
    assert [r["rel_path"] for r in rows] == sorted((img.rel_path for img in run.images()), key=lambda rel: (
        -int(by_queue[rel]["dropped"]), float(by_queue[rel]["score"]), rel))  # fmt: skip
    by_rel = {img.rel_path: img for img in run.images()}
    for r in rows:
        img = by_rel[r["rel_path"]]
        expected = min((i.det_conf * i.sam_score for i in img.instances), default=1.0)
        assert float(r["score"]) == pytest.approx(expected, abs=1e-6)
        assert int(r["instances"]) == len(img.instances)
        assert int(r["dropped"]) == sum(img.dropped.values())
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))


def test_one_line_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--to", "cvat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an annotator output folder" in err[0]
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path), "--to", "nothing"])
