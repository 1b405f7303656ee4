"""annotator.formats.coco: files pycocotools loads and scores AP 1.0 against themselves; streamed, atomic."""

from __future__ import annotations

import contextlib
import io
import json
import math

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from annotator.formats.coco import (
    CocoJsonWriter,
    coco_categories,
    coco_image_entry,
    instances_to_coco_annotations,
)
from annotator.polygons import Polygonizer
from annotator.records import Instance, MaskCrop, PolygonInstance

NAMES = {0: "person", 1: "car", 2: "dog"}


def disk(c, r, hw) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    cv2.circle(m, c, r, 1, -1)
    return m.astype(bool)


def fill_holes(m: np.ndarray) -> np.ndarray:
    bg = np.pad(~m, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(bg, None, (0, 0), 2)
    return bg[1:-1, 1:-1] != 2


def instance(mask, class_id, det_conf=0.8, sam_score=0.9) -> Instance:
    return Instance(class_id, det_conf, np.zeros(4, np.float32), sam_score, MaskCrop.from_full(mask), 0)


def images() -> list[tuple[str, tuple[int, int], list[Instance]]]:
    """(file_name, image_hw, instances): a disk, a ring with a hole, two parts, a border mask, an empty image."""
    a, b = (60, 80), (100, 120)
    ring = disk((60, 40), 15, a) & ~disk((60, 40), 6, a)
    return [
        ("a.jpg", a, [instance(disk((20, 20), 12, a), 0, 0.9), instance(ring, 2)]),
        ("sub/b.png", b, [instance(disk((20, 30), 10, b) | disk((90, 70), 14, b), 1, 0.6),
                          instance(disk((0, 99), 25, b), 0, 0.3)]),
        ("sub/empty.jpg", b, []),
    ]  # fmt: skip


def poly_inst(polys, class_id=0, area=50) -> PolygonInstance:
    return PolygonInstance(class_id, 0.5, 0.7, [np.asarray(p, float) for p in polys], area, (1.0, 2.0, 3.0, 4.0))


def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


# ----------------------------------------------------------------------------- pure converters
def test_categories_are_class_id_plus_one():
    assert coco_categories({1: "car", 0: "person"}) == [
        {"id": 1, "name": "person", "supercategory": ""},
        {"id": 2, "name": "car", "supercategory": ""},
    ]
    with pytest.raises(ValueError, match="class names"):
        coco_categories({})


@pytest.mark.parametrize(
    "args,ok",
    [((1, "a.jpg", (4, 5)), True), ((0, "a.jpg", (4, 5)), False), ((1, "a.jpg", (0, 5)), False)],
)
def test_image_entry(args, ok):
    if ok:
        assert coco_image_entry(*args) == {"id": 1, "file_name": "a.jpg", "height": 4, "width": 5}
    else:
        with pytest.raises(ValueError):
            coco_image_entry(*args)


TRI, SQ = [[0, 0], [0, 10], [10, 10]], [[20, 20], [20, 30], [30, 30], [30, 20]]


@pytest.mark.parametrize(
    "polys,n_polys",
    [
        ([TRI], 1),
        ([SQ, TRI], 2),
        ([SQ, [[1, 1], [2, 2]]], 1),  # the 2-point part is not written (frPyObjects would crash)
        ([[[1, 1], [2, 2], [1, 1]]], 0),  # 3 points but only 2 distinct: the instance is skipped
        ([], 0),
    ],
)
def test_polygon_annotations(polys, n_polys):
    anns = instances_to_coco_annotations([poly_inst(polys, class_id=2, area=77)], image_id=5, first_annotation_id=9)
    if n_polys == 0:
        assert anns == []
        return
    [ann] = anns
    assert ann["id"] == 9 and ann["image_id"] == 5 and ann["category_id"] == 3 and ann["iscrowd"] == 0
    # area and bbox describe the written segmentation as pycocotools rasterises it, not the record's fields
    rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 40, 40))
    assert ann["area"] == int(mask_utils.area(rle)) and ann["bbox"] == mask_utils.toBbox(rle).tolist()
    assert (ann["score"], ann["sam_score"]) == (0.5, 0.7)
    assert len(ann["segmentation"]) == n_polys and all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
    mask_utils.frPyObjects(ann["segmentation"], 40, 40)  # does not crash


def test_annotation_ids_are_consecutive_and_bad_ids_or_missing_rle_fail():
    anns = instances_to_coco_annotations([poly_inst([TRI]), poly_inst([]), poly_inst([SQ])], image_id=1,
                                         first_annotation_id=1)  # fmt: skip
    assert [a["id"] for a in anns] == [1, 2]
    with pytest.raises(ValueError, match="start at 1"):
        instances_to_coco_annotations([poly_inst([TRI])], image_id=1, first_annotation_id=0)
    with pytest.raises(ValueError, match="with_rle=True"):
        instances_to_coco_annotations([poly_inst([TRI])], image_id=1, first_annotation_id=1, segmentation="rle")


# ----------------------------------------------------------------------------- the writer + pycocotools
def write_dataset(path, segmentation) -> None:
    poly = Polygonizer(with_rle=True)
    with CocoJsonWriter(path, coco_categories(NAMES), {"description": "test"}, segmentation=segmentation) as w:
        for i, (name, hw, insts) in enumerate(images(), start=1):
            assert w.add_image(name, hw, poly(insts)) == i


@pytest.mark.parametrize("segmentation", ["polygon", "rle"])
def test_file_loads_in_pycocotools_and_scores_ap_1_against_itself(tmp_path, segmentation):
    path = tmp_path / "ann.json"
    write_dataset(path, segmentation)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json"]  # spill files are gone

    gt = quiet(COCO, str(path))
    assert len(gt.getImgIds()) == 3 and len(gt.getAnnIds()) == 4 and gt.getCatIds() == [1, 2, 3]
    assert [gt.imgs[i]["file_name"] for i in sorted(gt.imgs)] == ["a.jpg", "sub/b.png", "sub/empty.jpg"]
    assert sorted(gt.anns) == [1, 2, 3, 4]
    for (_, _, insts), img_id in zip(images(), sorted(gt.imgs)):
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[img_id]))
        for inst, ann in zip(insts, anns):
            # area / bbox are those of the segmentation as written, exactly as pycocotools rasterises it
            rle = gt.annToRLE(ann)
            assert ann["area"] == int(mask_utils.area(rle)) and ann["iscrowd"] == 0
            np.testing.assert_allclose(ann["bbox"], mask_utils.toBbox(rle), atol=0.01)
            if segmentation == "rle":
                assert ann["area"] == inst.mask.area_px  # the exact mask
            assert ann["category_id"] == inst.class_id + 1 and math.isclose(ann["score"], inst.det_conf)
            decoded = gt.annToMask(ann).astype(bool)
            if segmentation == "rle":
                np.testing.assert_array_equal(decoded, inst.mask.to_full())  # exact, hole included
            else:
                full = fill_holes(inst.mask.to_full())  # polygons carry no holes; pycocotools reads the
                assert (decoded & full).sum() / (decoded | full).sum() > 0.85  # vertices half a pixel inside

    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": a["score"],
             "segmentation": {**(r := gt.annToRLE(a)), "counts": r["counts"].decode() if isinstance(r["counts"], bytes)
                              else r["counts"]}} for a in gt.dataset["annotations"]]  # fmt: skip
    dt = quiet(gt.loadRes, dets)
    ev = COCOeval(gt, dt, "segm")
    quiet(ev.evaluate)
    quiet(ev.accumulate)
    quiet(ev.summarize)
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)
    ev = COCOeval(gt, quiet(gt.loadRes, [{**{k: a[k] for k in ("image_id", "category_id", "score", "bbox")}}
                                         for a in gt.dataset["annotations"]]), "bbox")  # fmt: skip
    quiet(ev.evaluate)
    quiet(ev.accumulate)
    quiet(ev.summarize)
    assert ev.stats[0] == pytest.approx(1.0)  # the boxes agree with the segmentations they describe


def test_area_and_bbox_agree_with_ann_to_mask_on_realistic_masks(tmp_path):
    """Synthetic shapes and blobs with holes and several parts, default polygon settings: pycocotools'
    annToMask of each written segmentation has exactly the written area and box."""
    from annotator.synthetic import make_shapes_image

    poly = Polygonizer()
    path = tmp_path / "ann.json"
    n = 0
    with CocoJsonWriter(path, coco_categories({0: "circle", 1: "rectangle", 2: "triangle"})) as w:
        for seed in range(6):
            _, gt_objects = make_shapes_image(seed, (240, 320), n_objects=(3, 5))
            insts = []
            for k, obj in enumerate(gt_objects):
                m = np.asarray(obj.mask, bool)
                if k % 2:  # punch a hole and add a detached part: multi-part masks with holes
                    ys, xs = np.nonzero(m)
                    cy, cx = int(ys.mean()), int(xs.mean())
                    m = m & ~disk((cx, cy), 3, m.shape) | disk((5, 5 + 10 * k), 4, m.shape)
                insts.append(instance(m, int(obj.class_id)))
            w.add_image(f"{seed}.png", (240, 320), poly(insts))
            n += len(insts)
    gt = quiet(COCO, str(path))
    assert len(gt.anns) == n
    for ann in gt.dataset["annotations"]:
        m = gt.annToMask(ann)
        ys, xs = np.nonzero(m)
        assert ann["area"] == int(m.sum())
        assert ann["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def test_exception_inside_the_block_leaves_target_untouched_and_no_temp_files(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text('{"old": true}')
    poly = Polygonizer()
    with pytest.raises(RuntimeError, match="disk full"):
        with CocoJsonWriter(path, coco_categories(NAMES)) as w:
            name, hw, insts = images()[0]
            w.add_image(name, hw, poly(insts))
            assert len(list(tmp_path.glob(".annotator-*.tmp"))) == 2  # streamed to spill files
            raise RuntimeError("disk full")
    assert path.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["ann.json"]


def test_rewrite_replaces_and_close_is_idempotent(tmp_path):
    path = tmp_path / "out" / "ann.json"
    write_dataset(path, "polygon")
    w = CocoJsonWriter(path, coco_categories({0: "x"}))
    w.close()
    w.close()
    data = json.loads(path.read_text())
    assert data["images"] == [] and data["annotations"] == [] and data["categories"][0]["name"] == "x"
    assert [p.name for p in path.parent.iterdir()] == ["ann.json"]
    with pytest.raises(RuntimeError, match="closed"):
        w.add_image("a.jpg", (10, 10), [])


@pytest.mark.parametrize(
    "file_names,insts,error",
    [
        (["a.jpg", "a.jpg"], [], "already added"),
        (["a.jpg"], [poly_inst([TRI], class_id=7)], "class ids \\[7\\]"),
        (["a.jpg"], [PolygonInstance(0, float("nan"), 0.5, [np.array(TRI, float)], 5, (0, 0, 1, 1))], "det_conf"),
    ],
)
def test_writer_rejects_bad_input_with_the_fix(tmp_path, file_names, insts, error):
    with CocoJsonWriter(tmp_path / "ann.json", coco_categories(NAMES)) as w:
        with pytest.raises(ValueError, match=error):
            for name in file_names:
                w.add_image(name, (40, 40), insts)
    data = json.loads((tmp_path / "ann.json").read_text())  # the good images before the error are kept
    assert len(data["images"]) == len(file_names) - 1 and data["annotations"] == []
