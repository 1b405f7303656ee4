"""``annotator eval``: AP/AR against a hand-labelled subset equal pycocotools' own COCOeval on the same inputs.

Predictions are built from the synthetic ground truth (exact masks -> polygons), then damaged on purpose
(missed objects, false positives, shifted masks) with known scores; the expected figures are computed here
with pycocotools directly on the ground-truth file.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from annotator.evaluate import STAT_NAMES, evaluate_images
from annotator.finished import FinishedImage
from annotator.formats.coco import instances_to_coco_annotations
from annotator.records import PolygonInstance
from annotator.synthetic import SHAPE_NAMES, mask_to_polygon_xy_px, write_synthetic_dataset

NAMES = dict(SHAPE_NAMES)


@pytest.fixture(scope="module")
def gt_root(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("gt") / "shapes", 10, seed=3, image_hw=(160, 200),
                                   ext=".png", n_objects=(2, 4), empty_fraction=0.1)  # fmt: skip


def _instance(mask: np.ndarray, class_id: int, score: float) -> PolygonInstance:
    ys, xs = np.nonzero(mask)
    return PolygonInstance(class_id, score, 1.0, [mask_to_polygon_xy_px(mask)], int(mask.sum()),
                           (float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)))  # fmt: skip


def _predictions(gt_root: Path, damage: bool) -> dict[str, FinishedImage]:
    """rel_path -> FinishedImage built from the ground truth; with ``damage``: every 3rd object missed, every
    4th shifted by 12 px, a low-score false positive in every 2nd image, scores spread over (0, 1]."""
    doc = json.loads((gt_root / "ground_truth_coco.json").read_text())
    rng = np.random.default_rng(0)
    out = {}
    k = 0
    for im in doc["images"]:
        h, w = im["height"], im["width"]
        insts = []
        for a in (a for a in doc["annotations"] if a["image_id"] == im["id"]):
            k += 1
            mask = mask_utils.decode(a["segmentation"]).astype(bool)
            if damage and k % 3 == 0:
                continue
            if damage and k % 4 == 0:
                mask = np.roll(mask, 12, axis=1)
            insts.append(_instance(mask, a["category_id"] - 1, float(rng.uniform(0.3, 1.0))))
        if damage and im["id"] % 2 == 0:
            fp = np.zeros((h, w), bool)
            fp[5:25, 5:40] = True
            insts.append(_instance(fp, 0, 0.2))
        out[im["file_name"]] = FinishedImage(im["file_name"], gt_root / "images" / im["file_name"], (h, w), "ok", tuple(insts))
    return out


def _pycocotools_stats(gt_file: Path, ours: dict[str, FinishedImage], kind: str) -> list[float]:
    """COCOeval computed directly: our instances as COCO results (the written form) on the GT file's ids."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ids = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
        results = []
        for rel, img in ours.items():
            for a in instances_to_coco_annotations(img.instances, image_id=ids[rel], first_annotation_id=1, image_hw=img.image_hw):
                a["score"] *= a.pop("sam_score")
                results.append(a)
        ev = COCOeval(gt, gt.loadRes(results), kind)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


@pytest.mark.parametrize("damage", [False, True], ids=["exact", "damaged"])
def test_ap_equals_pycocotools_on_the_ground_truth_file(gt_root, damage):
    ours = _predictions(gt_root, damage)
    gt_file = gt_root / "ground_truth_coco.json"
    report = evaluate_images(ours, NAMES, gt_file)
    assert report.images_matched == 10 and report.gt_images_unmatched == []
    for kind, stats in (("segm", report.segm), ("bbox", report.bbox)):
        expected = _pycocotools_stats(gt_file, ours, kind)
        assert [stats[n] for n in STAT_NAMES] == pytest.approx(expected, abs=1e-12), kind
    if not damage:  # polygons of the exact masks: every object found at IoU 0.5
        assert report.segm["AP50"] == pytest.approx(1.0) and report.segm["AP"] > 0.9
        assert all(d["f1"] == 1.0 for d in report.disagreements)
    else:
        assert 0.2 < report.segm["AP"] < 0.9
        worst = report.disagreements[0]
        assert worst["f1"] < 1.0 and worst["matched"] < worst["gt"] + worst["pred"]
        assert [d["f1"] for d in report.disagreements] == sorted(d["f1"] for d in report.disagreements)
    assert set(report.per_class) == set(NAMES.values())
    assert sum(c["gt"] for c in report.per_class.values()) == len(json.loads(gt_file.read_text())["annotations"])


def test_yolo_labels_tree_and_partial_ground_truth_match_by_name(gt_root, tmp_path):
    """A YOLO labels tree for a subset of the images (polygon rows), matched by path; an unknown image and an
    image in another folder level are reported, not guessed."""
    ours = _predictions(gt_root, damage=False)
    labels = tmp_path / "labels"
    shutil.copytree(gt_root / "labels", labels)
    (labels / "sub" / "0001.txt").unlink()  # this image was not hand-labelled
    (labels / "elsewhere.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    report = evaluate_images(ours, NAMES, labels)
    assert report.images_matched == 9 and report.gt_images_unmatched == ["elsewhere.jpg"]
    assert report.segm["AP50"] > 0.95  # YOLO polygons approximate the masks the predictions came from


def test_cli_eval_writes_eval_json_and_puts_disagreements_first_in_the_queue(gt_root, tmp_path, shapes_detector, sam2_t_ckpt):
    from annotator.api import run
    from annotator.cli import main
    from annotator.config import make_config
    from annotator.finished import open_finished
    from annotator.review.queue import review_order

    out = tmp_path / "out"
    run(make_config(data=gt_root / "images", det_model=str(shapes_detector), sam_model=str(sam2_t_ckpt), device="cpu",
                    output_dir=out, sam_min_score=0.0))  # fmt: skip
    assert main(["eval", str(out), "--gt", str(gt_root / "ground_truth_coco.json")]) == 0
    doc = json.loads((out / "eval.json").read_text())
    assert doc["images_matched"] == 10 and 0.0 <= doc["segm"]["AP"] <= 1.0
    disagree = [d["rel_path"] for d in doc["disagreements"] if d["f1"] < 1.0]
    assert disagree, "random SAM masks must disagree with the ground truth somewhere"
    from annotator.review.exports import disagreeing_images as _first

    order = [r.rel_path for r in review_order(open_finished(out), first=_first(open_finished(out)))]
    assert order[: len(disagree)] == disagree
    assert main(["eval", str(out), "--gt", str(tmp_path / "missing.json")]) == 2
