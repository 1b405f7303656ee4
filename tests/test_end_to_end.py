"""End to end: a folder with sub-folders, images with and without objects, a broken file and a label collision,
through the real loading path (trained shapes detector + SAM 2-tiny checkpoint), API and CLI.

Random SAM weights make noisy masks: these tests check plumbing, formats and identity, not mask quality.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from annotator import auto_annotate
from annotator.synthetic import SHAPE_NAMES, write_synthetic_dataset


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e") / "shapes"
    write_synthetic_dataset(root, 4, seed=3, n_objects=(2, 3), empty_fraction=0.0, labels=None)
    images = root / "images"
    cv2.imwrite(str(images / "sub" / "plain.png"), np.full((200, 240, 3), 127, np.uint8))  # nothing to detect
    (images / "broken.jpg").write_bytes(b"this is text, not a JPEG")
    shutil.copy(images / "0001.jpg", images / "0001.png")  # shares labels/0001.txt with 0001.jpg
    return root


@pytest.fixture(scope="session")
def api_run(dataset, shapes_detector, sam2_t_ckpt):
    summary = auto_annotate(
        dataset / "images",
        det_model=str(shapes_detector),
        sam_model=str(sam2_t_ckpt),
        device="cpu",
        format="both",
        sam_min_score=0.0,
        batch_size=4,
    )
    return summary


def _label_files(d: Path) -> dict[str, bytes]:
    """Every output file but the run report (timings) and the ledger folder."""
    return {
        p.relative_to(d).as_posix(): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and ".annotator" not in p.parts and p.name != "run_report.json"
    }


def test_summary_counts_and_paths(api_run, dataset):
    s = api_run
    out = dataset / "labels"  # images/ -> sibling labels/
    assert s.output_dir == out and s.labels_dir == out
    assert s.data_yaml == out / "data.yaml" and s.coco_json == out / "annotations.json"
    assert s.images_seen == 7  # 4 shapes + plain + broken + the .png twin
    assert s.failed == 1 and s.failures[0]["path"] == "broken.jpg" and s.failures[0]["status"] == "decode_error"
    assert s.annotated + s.empty + s.failed == s.images_seen
    assert s.empty >= 1 and s.annotated >= 4
    assert set(s.instances_per_class) <= set(SHAPE_NAMES.values()) and s.instances > 0
    assert sorted(s.label_collisions) == ["0001.jpg", "0001.png"]
    assert {"decode", "detect", "segment", "polygonize", "write"} <= set(s.seconds_per_stage)
    assert s.images_per_s > 0


def test_yolo_tree_mirrors_inputs(api_run, dataset):
    out = dataset / "labels"
    files = _label_files(out)
    # sub-folders mirrored: images/0000.jpg and images/sub/0000.jpg do not overwrite each other
    assert "0000.txt" in files and "sub/0000.txt" in files
    assert files["sub/plain.txt"] == b""  # processed, nothing found: an empty file
    assert "broken.txt" not in files  # failed: nothing written
    assert "0001.txt" not in files  # collision a.jpg / a.png: reported, never silently overwritten
    for name, content in files.items():
        if name.endswith(".txt"):
            for row in content.decode().splitlines():
                vals = row.split()
                assert int(vals[0]) in SHAPE_NAMES and (len(vals) - 1) % 2 == 0 and len(vals) >= 7
                assert all(0.0 <= float(v) <= 1.0 for v in vals[1:])


def test_data_yaml_lists_detector_names(api_run, dataset):
    doc = yaml.safe_load((dataset / "labels" / "data.yaml").read_text())
    assert doc["names"] == SHAPE_NAMES and doc["nc"] == len(SHAPE_NAMES)
    assert "path" not in doc and doc["train"] == doc["val"] == "labelled_images.list"  # relative to the yaml
    listed = (dataset / "labels" / "labelled_images.list").read_text().splitlines()
    # only images that have a label file train: not the broken one, not the a.jpg / a.png pair sharing a label
    want = ["0000.jpg", "sub/0000.jpg", "sub/0001.jpg", "sub/plain.png"]
    assert listed == [str(dataset / "images" / p) for p in want]


def test_yolo_labels_pass_ultralytics_checker(api_run, dataset):
    from ultralytics.data.utils import verify_image_label

    checked = 0
    for label in sorted((dataset / "labels").rglob("*.txt")):
        rel = label.relative_to(dataset / "labels").with_suffix("")
        image = next(p for p in (dataset / "images").glob(f"{rel}.*") if p.suffix in (".jpg", ".png"))
        nm, nf, ne, nc = 0, 0, 0, 0
        res = verify_image_label((str(image), str(label), "", False, len(SHAPE_NAMES), 0, 0, False))
        *_, nm, nf, ne, nc, msg = res
        assert nc == 0, msg  # nothing corrupt
        assert nf == 1 and nm == 0
        checked += 1
    assert checked == 4  # 0000, sub/0000, sub/0001, sub/plain (0001 collides, broken failed)


def test_coco_loads_and_evaluates(api_run, dataset):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    doc = json.loads((dataset / "labels" / "annotations.json").read_text())
    names = [im["file_name"] for im in doc["images"]]
    assert [im["id"] for im in doc["images"]] == list(range(1, len(names) + 1))
    assert "broken.jpg" not in names and {"0001.jpg", "0001.png", "sub/plain.png", "sub/0000.jpg"} <= set(names)
    assert [a["id"] for a in doc["annotations"]] == list(range(1, len(doc["annotations"]) + 1))
    assert {c["name"] for c in doc["categories"]} == set(SHAPE_NAMES.values())
    for a in doc["annotations"]:
        assert a["iscrowd"] == 0 and a["area"] > 0 and len(a["bbox"]) == 4
        assert 0 <= a["score"] <= 1 and "sam_score" in a
        assert all(len(poly) >= 6 for poly in a["segmentation"])

    gt = COCO(str(dataset / "ground_truth_coco.json"))
    dt_coco = COCO(str(dataset / "labels" / "annotations.json"))  # loads as a dataset file too
    ours_to_gt = {im["id"]: gt_id for im in doc["images"] for gt_id, g in gt.imgs.items() if g["file_name"] == im["file_name"]}
    results = [dict(a, image_id=ours_to_gt[a["image_id"]]) for a in doc["annotations"] if a["image_id"] in ours_to_gt]
    assert results and len(dt_coco.getAnnIds()) == len(doc["annotations"])
    ev = COCOeval(gt, gt.loadRes(results), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats.shape == (12,) and np.isfinite(ev.stats).all()


def test_cli_equals_api_byte_for_byte_and_replaces_stale_files(dataset, shapes_detector, sam2_t_ckpt, tmp_path):
    """The CLI and the API, each in a fresh process (same thread setup), write identical bytes."""
    out = tmp_path / "cli_out"
    (out / "labels" / "sub").mkdir(parents=True)  # another output folder: a dataset root with labels/, images/
    (out / "labels" / "0000.txt").write_text("99 0.1 0.1 0.2 0.2 0.3 0.1\n")  # stale: replaced, not appended to
    (out / "labels" / "sub" / "0000.txt").write_text("stale\n")
    cmd = [
        sys.executable, "-m", "annotator.cli", "annotate", str(dataset / "images"),
        "--det-model", str(shapes_detector), "--sam-model", str(sam2_t_ckpt), "--device", "cpu",
        "--output-dir", str(out), "--format", "both", "--sam-min-score", "0", "--batch-size", "4",
        "--max-failures", "1", "--json",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["failed"] == 1 and summary["images_seen"] == 7
    assert "7 images:" in p.stderr.strip().splitlines()[-1]

    api_out = tmp_path / "api_out"
    code = (
        "from annotator import auto_annotate; "
        f"auto_annotate({str(dataset / 'images')!r}, det_model={str(shapes_detector)!r}, "
        f"sam_model={str(sam2_t_ckpt)!r}, device='cpu', output_dir={str(api_out)!r}, format='both', "
        "sam_min_score=0.0, batch_size=4)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    cli, api = _label_files(out), _label_files(api_out)
    assert cli == api  # every label file, data.yaml and the COCO JSON: same bytes; stale content gone


def test_cli_exit_code_when_inputs_fail(dataset, random_yolo_ckpt, sam2_t_ckpt, tmp_path):
    cmd = [
        sys.executable, "-m", "annotator.cli", "annotate", str(dataset / "images"), "--det-model",
        str(random_yolo_ckpt), "--sam-model", str(sam2_t_ckpt), "--device", "cpu", "--output-dir", str(tmp_path / "o"),
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stderr  # the broken file failed; the others were written
    assert p.stdout.strip().splitlines()[-1].startswith("7 images: 0 annotated, 6 empty, 1 failed")
    assert (tmp_path / "o" / "labels" / "sub" / "plain.txt").exists()
    assert (tmp_path / "o" / "images" / "sub" / "plain.png").is_symlink()
