"""Scheduled jobs: incremental re-runs, settings changes, deletions, the lock, weight pinning, bad inputs.

Real files in tmp folders, real processes; the random yolo11n (no detections, so SAM never runs) keeps
most runs fast where masks don't matter, the shapes detector where instances must survive a re-run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from annotator.api import run
from annotator.config import make_config
from annotator.errors import AnnotatorError
from annotator.lock import OutputLock
from annotator.synthetic import make_shapes_image

VOLATILE = {"run_report.json"}  # rewritten by every run (timings); everything else must be byte-stable


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {
        p.relative_to(d).as_posix(): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and ".annotator" not in p.parts and p.name not in VOLATILE
    }


def tree_hashes(d: Path) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in tree_bytes(d).items()}


def write_images(folder: Path, seeds: list[int], *, sub: bool = True) -> None:
    for i, seed in enumerate(seeds):
        image, _ = make_shapes_image(seed, (192, 192), n_objects=(2, 3))
        target = folder / ("sub" if sub and i % 2 else "") / f"img{seed}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), image)


def cfg_for(data: Path, out: Path, det: Path, sam: Path, **kw):
    return make_config(data=data, det_model=str(det), sam_model=str(sam), device="cpu", output_dir=out, **kw)


@pytest.fixture()
def folder(tmp_path) -> Path:
    d = tmp_path / "images"
    write_images(d, [1, 2, 3])
    return d


def test_rerun_does_nothing_and_keeps_bytes(folder, tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    out = tmp_path / "labels"
    s1 = run(cfg_for(folder, out, random_yolo_ckpt, sam2_t_ckpt, format="both"))
    assert s1.images_seen == 3 and s1.empty == 3
    before = tree_bytes(out)
    assert {"img1.txt", "sub/img2.txt", "img3.txt", "data.yaml", "annotations.json"} <= set(before)
    s2 = run(cfg_for(folder, out, random_yolo_ckpt, sam2_t_ckpt, format="both"))
    assert s2.images_seen == 0 and s2.unchanged == 3
    assert tree_bytes(out) == before
    report = json.loads((out / "run_report.json").read_text())
    assert report["summary"]["unchanged"] == 3 and report["models"]["sam_model"]["sha256"]


def test_new_modified_deleted(folder, tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    out = tmp_path / "labels"
    run(cfg_for(folder, out, random_yolo_ckpt, sam2_t_ckpt))
    write_images(folder, [4], sub=False)  # new
    img1 = folder / "img1.png"
    cv2.imwrite(str(img1), make_shapes_image(99, (100, 120), 1)[0])  # modified: new size
    os.utime(img1, ns=(img1.stat().st_atime_ns, img1.stat().st_mtime_ns + 10**9))
    (folder / "img3.png").unlink()  # deleted
    s = run(cfg_for(folder, out, random_yolo_ckpt, sam2_t_ckpt))
    assert s.images_seen == 2 and s.unchanged == 1 and s.removed == 1
    assert (out / "img4.txt").exists() and not (out / "img3.txt").exists()

    (folder / "img4.png").unlink()
    s = run(cfg_for(folder, out, random_yolo_ckpt, sam2_t_ckpt, keep_deleted=True))
    assert s.images_seen == 0 and s.removed == 0 and (out / "img4.txt").exists()


def test_settings_change_reannotates_format_change_does_not(folder, tmp_path, shapes_detector, sam2_t_ckpt):
    out = tmp_path / "labels"
    s1 = run(cfg_for(folder, out, shapes_detector, sam2_t_ckpt, sam_min_score=0.0))
    assert s1.annotated >= 1 and s1.instances >= 1
    yolo_only = tree_bytes(out)
    # a format-only change rebuilds outputs from the ledger: no model runs, instances preserved
    s2 = run(cfg_for(folder, out, shapes_detector, sam2_t_ckpt, sam_min_score=0.0, format="both", save_conf=True))
    assert s2.images_seen == 0 and s2.unchanged == 3
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["annotations"]) == s1.instances
    rows = [r for f in out.rglob("*.txt") for r in f.read_text().splitlines()]
    assert len(rows) == s1.instances and all(len(r.split()) % 2 == 1 for r in rows)  # class + pairs: trainable
    scores = (out / "scores.csv").read_text().splitlines()  # save_conf: confidences in the sidecar, row by row
    assert scores[0].startswith("image,label_file,row,class_id") and len(scores) == 1 + s1.instances
    assert s2.scores_csv == out / "scores.csv"
    # back to the first settings: byte-identical to the first run's label files; our scores.csv is removed
    run(cfg_for(folder, out, shapes_detector, sam2_t_ckpt, sam_min_score=0.0))
    again = tree_bytes(out)
    assert {k: v for k, v in again.items() if k != "annotations.json"} == yolo_only
    # a setting that changes masks re-annotates everything
    s4 = run(cfg_for(folder, out, shapes_detector, sam2_t_ckpt, sam_min_score=0.0, conf=0.5))
    assert s4.images_seen == 3


def test_second_run_while_locked_exits_at_once(folder, tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    out = tmp_path / "labels"
    with OutputLock(out):
        p = subprocess.run(
            [sys.executable, "-m", "annotator.cli", "annotate", str(folder), "--det-model", str(random_yolo_ckpt),
             "--sam-model", str(sam2_t_ckpt), "--output-dir", str(out), "--device", "cpu"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert p.returncode == 2
    assert f"in use: PID {os.getpid()} (" in p.stderr and len(p.stderr.strip().splitlines()) == 1  # names the holder
    assert not list(out.glob("*.txt"))


def test_pinned_weights(folder, tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    good = hashlib.sha256(Path(sam2_t_ckpt).read_bytes()).hexdigest()
    out = tmp_path / "labels"
    with pytest.raises(AnnotatorError, match="refusing to load it"):
        run(cfg_for(folder, out, random_yolo_ckpt, sam2_t_ckpt, weights_sha256={"sam2_t.pt": "0" * 64}))
    assert not out.exists()  # stopped before any work
    s = run(cfg_for(folder, out, random_yolo_ckpt, sam2_t_ckpt, weights_sha256={"sam2_t.pt": good}))
    assert s.images_seen == 3


def test_bad_inputs_get_statuses_and_sources_stay_untouched(tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    from PIL import Image

    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "good.png"), np.full((64, 80, 3), 200, np.uint8))
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.png").write_text("hello, I am text")
    good_jpg = cv2.imencode(".jpg", np.full((64, 64, 3), 50, np.uint8))[1].tobytes()
    (d / "truncated.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])
    Image.new("RGB", (1, 1)).save(d / "one_pixel.png")
    Image.new("L", (40, 30), 128).save(d / "gray.png")
    Image.new("RGBA", (40, 30), (1, 2, 3, 4)).save(d / "rgba.png")
    Image.new("P", (40, 30)).save(d / "palette.png")
    Image.new("CMYK", (40, 30), (10, 20, 30, 40)).save(d / "cmyk.jpg")
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(d / "deep16.png")
    Image.new("RGB", (300, 300)).save(d / "big.png")
    (d / "name with spaces é.png").write_bytes((d / "good.png").read_bytes())
    (d / "notes.txt").write_text("ignored: not an image suffix")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}

    out = tmp_path / "out"
    s = run(cfg_for(d, out, random_yolo_ckpt, sam2_t_ckpt, max_pixels=200 * 200, format="both"))
    status = {f["path"]: f["status"] for f in s.failures}
    assert status == {
        "zero.jpg": "decode_error",
        "text.png": "decode_error",
        "truncated.jpg": "decode_error",
        "one_pixel.png": "too_small",
        "big.png": "too_large",
    }, s.failures
    assert all(f["reason"] and "\n" not in f["reason"] for f in s.failures)
    for converted in ("gray", "rgba", "palette", "cmyk", "deep16", "good", "name with spaces é"):
        assert (out / "labels" / f"{converted}.txt").read_text() == ""  # decoded and processed, nothing detected
    report = json.loads((out / "run_report.json").read_text())
    assert {f["path"] for f in report["summary"]["failures"]} == set(status)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()} == before
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"in", "out"}  # nothing written anywhere else
