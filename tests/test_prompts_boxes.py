"""``prompts: boxes``: existing labels as SAM prompts, polygon rows kept per row, classes carried over.

Random-weight SAM 2 (noise masks) is enough for the plumbing: which rows are kept, which are re-segmented,
classes, names, layout; the equivalence with Ultralytics' ``SAM(..., bboxes=...)`` uses compat mode.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from annotator import yolo_bbox2segment
from annotator.api import run
from annotator.config import make_config
from annotator.errors import ConfigError
from annotator.synthetic import make_shapes_image, write_synthetic_dataset

pytestmark = pytest.mark.slow


def _rows(path: Path) -> list[tuple[int, np.ndarray]]:
    if not path.is_file():
        return []
    return [(int(v[0]), np.array(v[1:], float)) for v in (ln.split() for ln in path.read_text().splitlines()) if v]


def _to_box_row(c: int, xy: np.ndarray) -> str:
    pts = xy.reshape(-1, 2)
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    return f"{c} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """A YOLO tree in two folders where every 2nd row of each file is a box, the others polygons."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("mixed") / "ds", 6, seed=21, image_hw=(192, 256),
                                   n_objects=(2, 3), empty_fraction=0.0)  # fmt: skip
    for txt in (root / "labels").rglob("*.txt"):
        lines = []
        for k, (c, v) in enumerate(_rows(txt)):
            lines.append(_to_box_row(c, v) if k % 2 == 0 else f"{c} " + " ".join(f"{x:.6f}" for x in v))
        txt.write_text("\n".join(lines) + "\n")
    return root


def test_mixed_tree_keeps_polygon_rows_and_segments_box_rows(mixed, sam2_t_ckpt):
    s = yolo_bbox2segment(mixed / "images", sam_model=str(sam2_t_ckpt), device="cpu", sam_min_score=0.0)
    out = mixed / "labels-segment"  # Ultralytics' default output folder
    assert s.failed == 0 and s.data_yaml == out / "data.yaml"
    assert "circle" in s.data_yaml.read_text()  # names from the dataset's data.yaml
    new_rows = 0
    for src in sorted((mixed / "labels").rglob("*.txt")):
        rel = src.relative_to(mixed / "labels")
        got = _rows(out / rel)  # straight into save_dir as Ultralytics writes them; sub-folders mirrored
        inp = _rows(src)
        polys = [(c, v) for c, v in inp if len(v) > 4]
        boxes = [(c, v) for c, v in inp if len(v) == 4]
        for c, v in polys:  # every polygon row is kept as it was
            assert any(gc == c and len(gv) == len(v) and np.allclose(gv, v, atol=1e-6) for gc, gv in got), rel
        made = [(c, v) for c, v in got if not any(len(v) == len(pv) and np.allclose(v, pv, atol=1e-6) for _, pv in polys)]
        assert all(len(v) >= 6 for _, v in made)  # box rows became polygon rows
        assert Counter(c for c, _ in made) <= Counter(c for c, _ in boxes)  # with their own classes
        new_rows += len(made)
    assert new_rows > 0


def test_ultralytics_yolo_bbox2segment_fails_on_the_same_tree(mixed, tmp_path):
    """The reason for the drop-in: Ultralytics' loader calls files that mix box and polygon rows corrupt (and
    its converter returns without doing anything as soon as one label has segments): nothing is written."""
    from ultralytics.data.converter import yolo_bbox2segment as ul_bbox2segment

    with pytest.raises(RuntimeError, match="mix segment and detection rows"):
        ul_bbox2segment(mixed / "images", save_dir=tmp_path / "ul", sam_model="sam_b.pt")
    assert not (tmp_path / "ul").exists()


def test_coco_boxes_and_polygons_as_prompts(tmp_path, sam2_t_ckpt):
    root = write_synthetic_dataset(tmp_path / "c", 4, seed=5, image_hw=(160, 200), labels=None, n_objects=(2, 3),
                                   empty_fraction=0.0)  # fmt: skip
    doc = json.loads((root / "ground_truth_coco.json").read_text())
    for k, a in enumerate(doc["annotations"]):
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]] if k % 2 else []  # polygon or box only
        a["attributes"], a["source_id"] = {"occluded": k % 3 == 0, "note": f"object {k}"}, k  # carried over
        a["score"] = -1.0  # a clash: ours wins
    coco = tmp_path / "boxes.json"
    coco.write_text(json.dumps(doc))
    cfg = make_config(data=root / "images", prompts="boxes", prompt_labels=coco, sam_model=str(sam2_t_ckpt),
                      device="cpu", output_dir=tmp_path / "out", format="both", sam_min_score=0.0)  # fmt: skip
    s = run(cfg)
    out = json.loads(s.coco_json.read_text())
    assert [c["name"] for c in out["categories"]] == [c["name"] for c in doc["categories"]]
    kept = [a for a in doc["annotations"] if a["segmentation"]]
    for a in kept:  # each polygon comes back (with the +0.5 px convention of our COCO writer, as any polygon)
        fn = next(im["file_name"] for im in doc["images"] if im["id"] == a["image_id"])
        oid = next(im["id"] for im in out["images"] if im["file_name"] == fn)
        mine = [b for b in out["annotations"] if b["image_id"] == oid and b["category_id"] == a["category_id"]]
        want = np.array(a["segmentation"][0]) + 0.5
        assert any(len(b["segmentation"][0]) == len(want) and np.allclose(b["segmentation"][0], want, atol=0.01)
                   for b in mine), fn  # fmt: skip
    assert len(out["annotations"]) <= len(doc["annotations"]) and len(out["annotations"]) > len(kept)
    by_source = {a["source_id"]: a for a in doc["annotations"]}
    for b in out["annotations"]:  # every object keeps its own label's extra fields, whatever was dropped
        a = by_source[b["source_id"]]
        assert b["attributes"] == a["attributes"] and b["category_id"] == a["category_id"] and b["score"] >= 0
    assert {a["source_id"] for a in kept} <= {b["source_id"] for b in out["annotations"]}
    from pycocotools.coco import COCO

    COCO(str(s.coco_json))  # still a COCO file


def test_same_masks_as_ultralytics_sam_with_bboxes(tmp_path, sam2_t_ckpt):
    from ultralytics import SAM

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(4)
    for i in range(2):
        im, objs = make_shapes_image(rng, (240, 320), n_objects=(2, 3))
        cv2.imwrite(str(images / f"{i}.png"), im)
        rows = [_to_box_row(o.class_id, np.array([[o.box_xyxy_px[0] / 320, o.box_xyxy_px[1] / 240],
                                                 [o.box_xyxy_px[2] / 320, o.box_xyxy_px[3] / 240]])) for o in objs]  # fmt: skip
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{i}.txt").write_text("\n".join(rows) + "\n")
    s = yolo_bbox2segment(images, sam_model=str(sam2_t_ckpt), device="cpu", compat="ultralytics")
    sam = SAM(str(sam2_t_ckpt))
    for i in range(2):
        h, w = 240, 320
        boxes = np.array([r[1] for r in _rows(tmp_path / "labels" / f"{i}.txt")])
        xyxy = np.c_[boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                     boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2] * [w, h, w, h]  # fmt: skip
        res = sam(str(images / f"{i}.png"), bboxes=xyxy, verbose=False, save=False, device="cpu")[0]
        theirs = sorted((np.round(m.reshape(-1), 6) for m in res.masks.xyn if len(m) >= 3), key=lambda a: (len(a), a[:2].tolist()))
        ours = sorted((v for _, v in _rows(s.labels_dir / f"{i}.txt")), key=lambda a: (len(a), a[:2].tolist()))
        assert len(ours) == len(theirs) and all(np.allclose(a, b, atol=2e-6) for a, b in zip(ours, theirs)), i


def test_output_must_not_overwrite_the_prompt_labels(mixed, tmp_path):
    with pytest.raises(ConfigError, match="would overwrite the prompt labels"):
        make_config(data=mixed / "images", prompts="boxes", output_dir=mixed / "labels")
    with pytest.raises(ConfigError, match="prompt_labels"):
        make_config(data=tmp_path, prompts="boxes")  # not an images/ folder: no default labels folder
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def test_ray_engine_writes_the_local_engines_bytes(mixed, sam2_t_ckpt, tmp_path):
    def files(d: Path) -> dict[str, bytes]:
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
                if p.is_file() and ".annotator" not in p.parts and p.name != "run_report.json"}  # fmt: skip

    common = dict(data=mixed / "images", prompts="boxes", sam_model=str(sam2_t_ckpt), device="cpu", format="both",
                  sam_min_score=0.0, batch_size=2)  # fmt: skip
    run(make_config(**common, output_dir=tmp_path / "local"))
    run(make_config(**common, output_dir=tmp_path / "ray", engine="ray", ray={"num_cpus": 2}))
    assert files(tmp_path / "ray") == files(tmp_path / "local")
