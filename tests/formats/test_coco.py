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

    assert_self_ap_is_1(gt)


def assert_self_ap_is_1(gt: COCO) -> None:
    """COCOeval of the file's own annotations as detections: AP 1.0 for segm (also AP50) and for bbox."""
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


def random_blob(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """1-3 separate clusters of overlapping random ellipses (several parts, concave, some thin), 0-3 holes."""
    m = np.zeros(hw, np.uint8)
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.integers(0, hw[1]), rng.integers(0, hw[0])  # may touch or cross the image border
        for _ in range(rng.integers(1, 6)):
            centre = (int(cx + rng.integers(-25, 26)), int(cy + rng.integers(-25, 26)))
            axes = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
            cv2.ellipse(m, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    ys, xs = np.nonzero(m)
    for _ in range(rng.integers(0, 4) if len(ys) else 0):
        i = rng.integers(len(ys))
        cv2.circle(m, (int(xs[i]), int(ys[i])), int(rng.integers(1, 8)), 0, -1)
    return m.astype(bool)


def realistic_instances(hw: tuple[int, int], n_images: int) -> list[list[Instance]]:
    """Per image: annotator.synthetic shapes (every other one with a hole punched and a detached part added)
    and random blobs with holes and several parts."""
    from annotator.synthetic import make_shapes_image

    rng = np.random.default_rng(1)
    out = []
    for seed in range(n_images):
        _, objects = make_shapes_image(seed, hw, n_objects=(3, 5))
        insts = []
        for k, obj in enumerate(objects):
            m = np.asarray(obj.mask, bool)
            if k % 2:
                ys, xs = np.nonzero(m)
                m = m & ~disk((int(xs.mean()), int(ys.mean())), 3, hw) | disk((5, 5 + 10 * k), 4, hw)
            insts.append(instance(m, int(obj.class_id), det_conf=float(rng.uniform(0.3, 1.0))))
        for _ in range(4):
            m = random_blob(rng, hw)
            if m.any():
                insts.append(instance(m, int(rng.integers(0, 3)), det_conf=float(rng.uniform(0.3, 1.0))))
        out.append(insts)
    return out


@pytest.mark.parametrize("segmentation", ["polygon", "rle"])
def test_area_and_bbox_equal_what_pycocotools_decodes_on_realistic_masks(tmp_path, segmentation):
    """Shapes and blobs with holes and several parts, default Polygonizer settings, the real writer: for every
    annotation ``area`` and ``bbox`` equal pycocotools' ``area`` / ``toBbox`` of ``annToRLE(ann)`` and the
    pixel count / tight box of ``annToMask(ann)`` exactly (tolerance 0: the writer runs the same
    rasterisation on the same coordinates); the file scores AP 1.0 against itself for segm and bbox."""
    hw = (240, 320)
    poly = Polygonizer(with_rle=True)  # with_rle only attaches the RLE; polygons are the defaults'
    path = tmp_path / "ann.json"
    n_parts = n_holes = 0
    mask_areas: list[int] = []
    with CocoJsonWriter(path, coco_categories({0: "circle", 1: "rectangle", 2: "triangle"}),
                        segmentation=segmentation) as w:  # fmt: skip
        for i, insts in enumerate(realistic_instances(hw, 6)):
            pinsts = poly(insts)
            w.add_image(f"{i}.png", hw, pinsts)
            mask_areas += [p.area_px for p in pinsts]
            n_parts += sum(len(p.polygons_xy_px) > 1 for p in pinsts)
            n_holes += sum((fill_holes(m) != m).any() for m in (inst.mask.to_full() for inst in insts))
    assert n_parts >= 10 and n_holes >= 10  # the cases where mask and polygons differ most are well covered
    gt = quiet(COCO, str(path))
    assert len(gt.anns) == len(mask_areas) >= 40  # nothing skipped
    for ann, mask_area in zip(gt.dataset["annotations"], mask_areas):
        rle = gt.annToRLE(ann)
        assert ann["area"] == int(mask_utils.area(rle)) and isinstance(ann["area"], int)
        assert ann["bbox"] == mask_utils.toBbox(rle).tolist()
        m = gt.annToMask(ann).astype(bool)
        ys, xs = np.nonzero(m)
        assert ann["area"] == int(m.sum()) > 0
        assert ann["bbox"] == [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
        if segmentation == "polygon":
            # rasterising the polygon set on the exact written coordinates: the same as decoding the file
            rle2 = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], *hw))
            assert int(mask_utils.area(rle2)) == ann["area"]
        else:
            assert ann["area"] == mask_area  # the exact mask
    if segmentation == "polygon":  # the simplified polygons are not the mask: its pixel count would be wrong
        assert sum(a["area"] != m for a, m in zip(gt.dataset["annotations"], mask_areas)) > len(mask_areas) // 2
    assert_self_ap_is_1(gt)


def test_polygon_area_uses_the_image_raster_and_empty_segmentations_are_not_written():
    """Vertices outside the image are clipped by pycocotools to the image's raster, so area / bbox are those of
    ``annToMask`` in the image; a sliver with 3 distinct vertices but no pixel (Ultralytics-compat polygons of a
    1-pixel-wide line) is skipped, like an instance without a polygon."""
    big = poly_inst([[[0, 0], [0, 39], [39, 39], [39, 0]]])
    [ann] = instances_to_coco_annotations([big], image_id=1, first_annotation_id=1, image_hw=(20, 30))
    rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 20, 30))
    assert (ann["area"], ann["bbox"]) == (int(mask_utils.area(rle)), mask_utils.toBbox(rle).tolist())
    assert ann["area"] <= 20 * 30 and ann["bbox"][0] + ann["bbox"][2] <= 30 and ann["bbox"][1] + ann["bbox"][3] <= 20

    line = np.zeros((40, 40), bool)
    line[5, 5:20] = line[5:20, 19] = True
    [sliver] = Polygonizer(compat="ultralytics")([instance(line, 0)])
    assert len(sliver.polygons_xy_px[0]) >= 3
    anns = instances_to_coco_annotations([sliver, poly_inst([SQ])], image_id=1, first_annotation_id=1)
    assert [a["id"] for a in anns] == [1] and anns[0]["area"] > 0


def test_rle_area_and_bbox_are_the_masks():
    """RLE segmentation: area / bbox are those of the exact mask, also when counts arrive as bytes."""
    m = disk((20, 20), 12, (40, 50)) & ~disk((20, 20), 4, (40, 50)) | disk((44, 35), 3, (40, 50))
    [p] = Polygonizer(with_rle=True)([instance(m, 0)])
    as_bytes = PolygonInstance(0, 0.5, 0.5, p.polygons_xy_px, p.area_px, p.bbox_xywh_px,
                               {**p.rle, "counts": p.rle["counts"].encode()})  # fmt: skip
    for inst in (p, as_bytes):
        [ann] = instances_to_coco_annotations([inst], image_id=1, first_annotation_id=1, segmentation="rle")
        assert ann["segmentation"] == p.rle and ann["area"] == int(m.sum()) == p.area_px
        assert ann["bbox"] == list(p.bbox_xywh_px)


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
