"""Tests for annotator.synthetic: exact masks, tight boxes, a dataset that pycocotools and Ultralytics read."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from annotator.synthetic import (
    SHAPE_NAMES,
    main,
    make_shapes_image,
    mask_box_xyxy_px,
    mask_to_polygon_xy_px,
    write_synthetic_dataset,
)


@pytest.mark.parametrize("seed", range(8))
def test_masks_are_exactly_the_pixels_of_each_shape(seed):
    image, objects = make_shapes_image(seed, image_hw=(96, 128), n_objects=(1, 5))
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    assert 1 <= len(objects) <= 5
    union = np.zeros((96, 128), bool)
    for obj in objects:
        assert obj.mask.shape == (96, 128) and obj.mask.dtype == bool and obj.area_px > 0
        assert not (union & obj.mask).any(), "visible masks must not overlap"
        union |= obj.mask
        assert obj.class_id in SHAPE_NAMES
    for obj in objects:
        same_colour = np.zeros_like(union)
        for other in objects:
            if other.colour_bgr == obj.colour_bgr:
                same_colour |= other.mask
        painted = (image == np.array(obj.colour_bgr, np.uint8)).all(axis=-1)
        np.testing.assert_array_equal(painted, same_colour)  # exact: no pixel more, no pixel less


@pytest.mark.parametrize("seed", range(4))
def test_boxes_are_tight_around_masks(seed):
    _, objects = make_shapes_image(seed, image_hw=(80, 60))
    for obj in objects:
        x0, y0, x1, y1 = (int(v) for v in obj.box_xyxy_px)
        assert obj.mask[y0:y1, x0:x1].sum() == obj.area_px  # contains the mask
        inner = obj.mask[y0:y1, x0:x1]
        assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()  # tight


def test_same_seed_same_image_and_zero_objects_allowed():
    a, objs_a = make_shapes_image(7, image_hw=(48, 48))
    b, objs_b = make_shapes_image(np.random.default_rng(7), image_hw=(48, 48))
    np.testing.assert_array_equal(a, b)
    assert [o.box_xyxy_px for o in objs_a] == [o.box_xyxy_px for o in objs_b]
    empty, none = make_shapes_image(1, image_hw=(48, 48), n_objects=0, background="plain")
    assert none == [] and empty.shape == (48, 48, 3)
    with pytest.raises(ValueError, match="background"):
        make_shapes_image(1, background="stripes")


def test_polygon_and_box_helpers():
    mask = np.zeros((10, 10), bool)
    mask[2:7, 3:9] = True
    assert mask_box_xyxy_px(mask) == (3.0, 2.0, 9.0, 7.0)
    xy = mask_to_polygon_xy_px(mask)
    assert xy.min(axis=0).tolist() == [3.5, 2.5] and xy.max(axis=0).tolist() == [8.5, 6.5]


def test_dataset_files_and_coco_ground_truth(tmp_path):
    coco_mod = pytest.importorskip("pycocotools.coco")
    root = write_synthetic_dataset(tmp_path / "ds", 6, seed=3, image_hw=(64, 80), ext=".png", empty_fraction=0.2)
    images = sorted(p.relative_to(root / "images").as_posix() for p in (root / "images").rglob("*.png"))
    assert images == ["0000.png", "0001.png", "0002.png", "sub/0000.png", "sub/0001.png", "sub/0002.png"]
    coco = coco_mod.COCO(str(root / "ground_truth_coco.json"))
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    assert [c["name"] for c in coco.loadCats([1, 2, 3])] == [SHAPE_NAMES[0], SHAPE_NAMES[1], SHAPE_NAMES[2]]
    n_empty = 0
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        assert image_id >= 1 and (info["height"], info["width"]) == (64, 80)
        image = cv2.imread(str(root / "images" / info["file_name"]))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        label = (root / "labels" / info["file_name"]).with_suffix(".txt").read_text().splitlines()
        assert len(label) == len(anns)
        n_empty += not anns
        for ann, line in zip(anns, label):
            assert ann["id"] >= 1 and ann["iscrowd"] == 0 and ann["category_id"] in (1, 2, 3)
            mask = coco.annToMask(ann).astype(bool)
            assert ann["area"] == mask.sum()
            x0, y0, x1, y1 = mask_box_xyxy_px(mask)
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            colours = np.unique(image[mask], axis=0)
            assert len(colours) == 1, "PNG: every mask pixel has the shape's exact colour"
            fields = line.split()
            assert int(fields[0]) == ann["category_id"] - 1
            xy = np.array(fields[1:], float).reshape(-1, 2) * [80, 64]
            drawn = np.zeros((64, 80), np.uint8)
            cv2.fillPoly(drawn, [np.rint(xy - 0.5).astype(np.int32)], 1)
            assert (drawn.astype(bool) & mask).sum() / (drawn.astype(bool) | mask).sum() > 0.85
    assert n_empty >= 1  # round(0.2 * 6) = 1 image without objects (more if shapes found no room)
    assert "names:" in (root / "data.yaml").read_text()


def test_box_labels_and_cli(tmp_path):
    main([str(tmp_path / "cli"), "--n-images", "2", "--image-hw", "48", "64", "--labels", "box", "--subdirs", ""])
    data = json.loads((tmp_path / "cli" / "ground_truth_coco.json").read_text())
    assert [im["file_name"] for im in data["images"]] == ["0000.jpg", "0001.jpg"]
    lines = [ln for p in sorted((tmp_path / "cli" / "labels").glob("*.txt")) for ln in p.read_text().splitlines()]
    assert len(lines) == len(data["annotations"]) and all(len(ln.split()) == 5 for ln in lines)
    with pytest.raises(ValueError, match="ext"):
        write_synthetic_dataset(tmp_path / "bad", 1, ext=".gif")


def test_no_labels_writes_images_and_coco_only(tmp_path):
    root = write_synthetic_dataset(tmp_path / "gt", 2, image_hw=(32, 32), labels=None)
    assert sorted(p.name for p in root.iterdir()) == ["ground_truth_coco.json", "images"]
