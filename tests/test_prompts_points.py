"""``prompts: points``: a JSON file of clicks per object -> one SAM mask per object, classes carried over.

Random-weight SAM 2 (noise masks) is enough for the plumbing: parsing, classes, names, layout; the equivalence
with Ultralytics' ``SAM(img, points=..., labels=...)`` uses compat mode, and the batched decoder is held to the
compat path with the tolerance of ``tests/test_segment_batched.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from annotator.api import run
from annotator.config import make_config
from annotator.errors import ConfigError
from annotator.prompt_points import PointPromptSource, load_points_file
from annotator.synthetic import make_shapes_image

pytestmark = pytest.mark.slow

HW = (240, 320)


def _write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "points.json"
    p.write_text(json.dumps(doc))
    return p


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"class": 0, "points": [[1, 2]], "labels": [1, 0]}, r"points.json: images\['a.png'\]\[0\].labels: expected one 1 \(on the object\) or 0"),
        ({"class": "dog", "points": [[1, 2]]}, r"images\['a.png'\]\[0\].class: expected a class id or a name in names \['cat'\], found dog"),
        ({"class": 0, "points": [[1, 2, 3]]}, r"\[0\].points: expected a list of \[x, y\] pairs"),
        ({"class": 0, "points": [[1, 2]], "labels": [0]}, "at least one point with label 1"),
        ({"class": 0, "points": [], "box": [5, 5, 1, 9]}, r"\[0\].box: expected \[x1, y1, x2, y2\] with 0 <= x1 < x2"),
        ({"class": 0, "point": [[1, 2]]}, r"expected only the keys class, points, labels, box, found key 'point'"),
    ],
)
def test_malformed_file_says_which_object_and_what(tmp_path, obj, match):
    p = _write(tmp_path, {"names": ["cat"], "images": {"a.png": [{"class": 0, "points": [[3, 3]]}, obj][1:]}})
    with pytest.raises(ConfigError, match=match):
        load_points_file(p)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="bad.json: line 1 column 2: expected valid JSON"):
        load_points_file(bad)


def test_parse_pads_points_and_marks_point_only_boxes(tmp_path):
    p = _write(tmp_path, {"names": {"0": "cat", "1": "dog"}, "images": {"sub\\..\\a.png": [], "sub/b.png": [
        {"class": "dog", "points": [[10, 20], [30, 5], [1, 1]], "labels": [1, 1, 0]},
        {"class": 0, "points": [[50, 60]], "box": [40, 50, 70, 90]},
        {"class": 0, "box": [1, 2, 3, 4]},
    ]}})  # fmt: skip
    src = PointPromptSource(p, tmp_path)
    assert src.names == {0: "cat", 1: "dog"}
    d = src.for_image("sub/b.png", HW).boxes
    assert d.class_ids.tolist() == [1, 0, 0] and d.det_conf.tolist() == [1.0, 1.0, 1.0]
    assert d.point_labels.tolist() == [[1, 1, 0], [1, -1, -1], [-1, -1, -1]]
    assert d.n_points().tolist() == [3, 1, 0] and d.box_is_prompt.tolist() == [False, True, True]
    assert d.xyxy_px[0].tolist() == [10, 5, 30, 20]  # the box of the positive points (not a prompt)
    assert len(src.for_image("a.png", HW).boxes) == 0 and len(src.for_image("other.png", HW).boxes) == 0
    with pytest.raises(ConfigError, match=r"images\['sub/b.png'\]\[0\].points: expected points inside the 25x10 image"):
        src.for_image("sub/b.png", (10, 25))
    with pytest.raises(ConfigError, match="needs prompt_points"):
        make_config(data=tmp_path, prompts="points")

    from annotator.cli import _settings, build_parser

    ns = build_parser().parse_args(["annotate", str(tmp_path), "--prompts", "points", "--prompt-points", str(p)])
    cfg = make_config(**_settings(ns))
    assert cfg.prompts == "points" and cfg.prompt_points == p


@pytest.fixture(scope="module")
def clicked(tmp_path_factory) -> tuple[Path, Path, dict]:
    """Two images of shapes; per image every object has the same number of clicks (Ultralytics takes one
    ``(N, K, 2)`` array per call): image 0 a positive click inside and a negative one outside each object, image
    1 its box and one positive click."""
    root = tmp_path_factory.mktemp("clicked")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    doc = {"names": {"0": "circle", "1": "rectangle", "2": "triangle"}, "images": {}}
    for i in range(2):
        im, objs = make_shapes_image(rng, HW, n_objects=(2, 3))
        cv2.imwrite(str(images / f"{i}.png"), im)
        entries = []
        for o in objs:
            ys, xs = np.nonzero(o.mask)
            inside = [float(xs[len(xs) // 2]), float(ys[len(ys) // 2])]
            x0, y0, x1, y1 = o.box_xyxy_px
            if i == 0:
                outside = [float(max(x0 - 3, 0)), float(max(y0 - 3, 0))]
                entries.append({"class": doc["names"][str(o.class_id)], "points": [inside, outside], "labels": [1, 0]})
            else:
                entries.append({"class": o.class_id, "points": [inside], "box": [x0, y0, x1, y1]})
        doc["images"][f"{i}.png"] = entries
    return images, _write(root, doc), doc


def _yolo_rows(path: Path) -> list[np.ndarray]:
    return [np.array(v[1:], float) for v in (ln.split() for ln in path.read_text().splitlines()) if v]


def test_same_masks_as_ultralytics_sam_with_points(clicked, sam2_t_ckpt, tmp_path):
    from ultralytics import SAM

    images, points, doc = clicked
    cfg = make_config(data=images, prompts="points", prompt_points=points, sam_model=str(sam2_t_ckpt), device="cpu",
                      compat="ultralytics", sam_min_score=0.0, output_dir=tmp_path / "out")  # fmt: skip
    s = run(cfg)
    sam = SAM(str(sam2_t_ckpt))
    total = 0
    for i in range(2):
        objs = doc["images"][f"{i}.png"]
        kw = {"points": [o["points"] for o in objs], "labels": [o.get("labels", [1] * len(o["points"])) for o in objs]}
        if "box" in objs[0]:
            kw["bboxes"] = [o["box"] for o in objs]
        res = sam(str(images / f"{i}.png"), **kw, verbose=False, save=False, device="cpu", conf=0.0)[0]
        key = lambda a: (len(a), a[:2].tolist())  # noqa: E731
        theirs = sorted((np.round(m.reshape(-1), 6) for m in res.masks.xyn if len(m) >= 3), key=key)
        ours = sorted(_yolo_rows(s.labels_dir / f"{i}.txt"), key=key)
        assert len(ours) == len(theirs) and all(np.allclose(a, b, atol=2e-6) for a, b in zip(ours, theirs)), i
        total += len(ours)
    assert total >= 3


def _decode(seg, feats, dets, *, batched: bool, step: int):
    """The decoder alone on encoded features (the encoder, the slow part on a CPU, runs once per test)."""
    import torch

    from annotator.segment import SamOutput

    seg.batch_decoder, seg.max_decoder_boxes = batched, step
    todo = [i for i, d in enumerate(dets) if len(d)]
    assert len(todo) == len(feats[0])
    with torch.inference_mode():
        boxes, img_idx = seg._boxes([HW] * len(dets), dets, todo)
        extra = seg._extra_prompts([HW] * len(dets), dets, todo)
        lg, sc = seg._decode(feats, boxes, img_idx, [len(dets[i]) for i in todo], extra)
    starts = np.cumsum([0, *[len(d) for d in dets]])
    return [SamOutput(lg[a:b].numpy(), sc[a:b].numpy()) for a, b in zip(starts[:-1], starts[1:])]


def test_batched_decoder_agrees_with_compat_path(clicked, sam2_t_ckpt):
    import torch

    from annotator.segment import Segmenter

    from annotator.records import Detections

    images, points, _ = clicked
    d0 = PointPromptSource(points, images).for_image("0.png", HW).boxes
    n = len(d0)
    one_click = np.c_[d0.point_labels[:, :1], np.full((n, 1), -1, np.int32)]
    mixed = Detections(  # one image, two layouts: 2 clicks without a box; the box and 1 click
        np.concatenate([d0.xyxy_px, d0.xyxy_px]), np.r_[d0.class_ids, d0.class_ids], np.ones(2 * n, np.float32),
        points_xy_px=np.concatenate([d0.points_xy_px, d0.points_xy_px]),
        point_labels=np.concatenate([d0.point_labels, one_click]), box_is_prompt=np.r_[[False] * n, [True] * n],
    )  # fmt: skip
    seg = Segmenter(sam2_t_ckpt, "sam2_t.pt", "sam2", device="cpu")
    with torch.inference_mode():
        feats = seg._encode_images(seg.prepare(cv2.imread(str(images / "0.png")))[None], [0])
    ref = _decode(seg, feats, [mixed], batched=False, step=4)[0]  # compat: Ultralytics' per-image call
    got = _decode(seg, feats, [mixed], batched=True, step=2)[0]  # the objects of a layout split over calls
    np.testing.assert_allclose(got.scores, ref.scores, rtol=0, atol=1e-5)
    assert float(np.abs(got.logits_lowres - ref.logits_lowres).max()) <= 1e-4  # as test_segment_batched
    alone = _decode(seg, feats, [d0], batched=True, step=2)[0]  # a layout's masks do not depend on the others
    np.testing.assert_allclose(alone.logits_lowres, got.logits_lowres[:n], rtol=0, atol=1e-4)
    box_only = _decode(seg, feats, [Detections(mixed.xyxy_px, mixed.class_ids, mixed.det_conf)], batched=True, step=2)
    assert not np.allclose(box_only[0].logits_lowres[n:], got.logits_lowres[n:])  # the clicks reach the decoder
    insts = seg.finish(got, mixed, HW)
    assert insts
    for inst in insts:
        x0, y0, w, h = inst.mask.bbox_xywh_px
        if inst.det_index < n:  # point-only objects: the mask's own box
            assert inst.box_xyxy_px.tolist() == [x0, y0, x0 + w, y0 + h]
        else:
            assert inst.box_xyxy_px.tolist() == mixed.xyxy_px[inst.det_index].tolist()


def test_run_writes_yolo_and_coco_with_the_files_classes(clicked, sam2_t_ckpt, tmp_path):
    images, points, doc = clicked
    doc = json.loads(points.read_text())
    doc["images"]["0.png"].append({"class": "triangle", "points": [[5, 5], [9, 9], [100, 100]], "labels": [1, 1, 0]})
    p2 = tmp_path / "p2.json"
    p2.write_text(json.dumps(doc))
    from annotator import auto_annotate

    s = auto_annotate(images / "0.png", sam_model=str(sam2_t_ckpt), device="cpu", output_dir=tmp_path / "out",
                      format="both", prompts="points", prompt_points=p2, sam_min_score=0.0)  # fmt: skip
    assert s.failed == 0
    assert "triangle" in s.data_yaml.read_text()
    coco = json.loads(s.coco_json.read_text())
    assert [c["name"] for c in coco["categories"]] == ["circle", "rectangle", "triangle"]
    assert 0 < len(coco["annotations"]) <= len(doc["images"]["0.png"])
    assert {a["category_id"] for a in coco["annotations"]} <= {c["id"] for c in coco["categories"]}
    assert all(a["score"] == 1.0 for a in coco["annotations"])
    want = sorted(o["class"] if isinstance(o["class"], int) else ["circle", "rectangle", "triangle"].index(o["class"])
                  for o in doc["images"]["0.png"])  # fmt: skip
    rows = [int(ln.split()[0]) for ln in (s.labels_dir / "0.txt").read_text().splitlines() if ln.strip()]
    assert rows and set(rows) <= set(want)  # each written row has a class of the file's objects
    # a changed points file re-annotates: its content is hashed in the detector's place
    from annotator.models import resolve_models
    from annotator.workplan import hash_weights

    def digest():
        m = resolve_models("yolo11n.pt", str(sam2_t_ckpt), prompt_labels=p2)
        return hash_weights(m, {})[str(p2)]

    before = digest()
    doc["images"]["1.png"] = doc["images"]["1.png"][:1]
    p2.write_text(json.dumps(doc))
    assert digest() != before



def test_mobile_sam_points_equal_ultralytics(clicked, mobile_sam_ckpt):
    """The SAM / MobileSAM family takes clicks and boxes apart (its own prompt encoder call), decoded per image:
    the very logits of Ultralytics' ``Predictor.prompt_inference`` (random MobileSAM keeps no mask, so the
    low-res logits and scores are compared)."""
    import torch
    from ultralytics.models.sam import Predictor

    from annotator.segment import Segmenter

    images, points, doc = clicked
    src = PointPromptSource(points, images)
    seg = Segmenter(mobile_sam_ckpt, "mobile_sam.pt", "sam", device="cpu", min_score=0.0, mask_upsample="full")
    pr = Predictor(overrides=dict(model=str(mobile_sam_ckpt), device="cpu", save=False, verbose=False, imgsz=1024))
    for i in range(2):
        im = cv2.imread(str(images / f"{i}.png"))
        d = src.for_image(f"{i}.png", HW).boxes
        ours = seg.infer(seg.prepare(im)[None], [HW], [d])[0]
        objs = doc["images"][f"{i}.png"]
        pts, labels = [o["points"] for o in objs], [o.get("labels", [1] * len(o["points"])) for o in objs]
        boxes = [o["box"] for o in objs] if "box" in objs[0] else None
        pr.set_image(str(images / f"{i}.png"))
        with torch.no_grad():
            prompts = pr._prepare_prompts((1024, 1024), HW, boxes, pts, labels)  # prompt_inference's own steps
            lg, sc = pr._inference_features(pr.features, *prompts)
        np.testing.assert_array_equal(ours.logits_lowres, lg.numpy())
        np.testing.assert_array_equal(ours.scores, sc.numpy())
