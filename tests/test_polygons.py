"""annotator.polygons: masks -> valid polygons, Ultralytics-identical compat mode, exact RLE."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import shapely
from pycocotools import mask as mask_utils
from shapely.geometry import Polygon

from annotator.polygons import (
    DEFAULT_TOLERANCE_PX,
    Polygonizer,
    mask_to_polygons,
    mask_to_polygons_ultralytics,
    mask_to_rle,
)
from annotator.records import Instance, MaskCrop, PolygonInstance

os.environ.setdefault("YOLO_OFFLINE", "1")

HW = (96, 128)  # (H, W)


# ----------------------------------------------------------------------------- synthetic masks
def blank(hw=HW) -> np.ndarray:
    return np.zeros(hw, np.uint8)


def circle(c=(60, 45), r=25, hw=HW) -> np.ndarray:
    m = blank(hw)
    cv2.circle(m, c, r, 1, -1)
    return m.astype(bool)


def ellipse(c=(64, 48), axes=(40, 18), angle=30, hw=HW) -> np.ndarray:
    m = blank(hw)
    cv2.ellipse(m, c, axes, angle, 0, 360, 1, -1)
    return m.astype(bool)


def rotated_rect(c=(64, 48), size=(70, 30), angle=25, hw=HW) -> np.ndarray:
    m = blank(hw)
    box = cv2.boxPoints((c, size, angle)).round().astype(np.int32)
    cv2.fillPoly(m, [box], 1)
    return m.astype(bool)


def ring(hw=HW) -> np.ndarray:
    return circle((64, 48), 35, hw) & ~circle((64, 48), 14, hw)


def ring_with_island(hw=HW) -> np.ndarray:
    return ring(hw) | circle((64, 48), 6, hw)


def two_blobs(hw=HW) -> np.ndarray:
    return circle((30, 30), 15, hw) | ellipse((95, 65), (22, 14), 10, hw)


def touching_border(hw=HW) -> np.ndarray:
    return circle((5, 90), 30, hw)  # cut by the left and bottom edges


def corner_pinch(hw=HW) -> np.ndarray:  # two squares meeting at one diagonal pixel: a self-touching contour
    m = np.zeros(hw, bool)
    m[10:30, 10:30] = True
    m[30:50, 30:50] = True
    return m


def pixels(*yx, hw=HW) -> np.ndarray:
    m = np.zeros(hw, bool)
    for y, x in yx:
        m[y, x] = True
    return m


def full(hw=HW) -> np.ndarray:
    return np.ones(hw, bool)


def hline(hw=HW) -> np.ndarray:  # 1-pixel-wide line: no area
    m = np.zeros(hw, bool)
    m[40, 10:90] = True
    return m


def blob_and_speck(hw=HW) -> np.ndarray:
    m = circle((50, 50), 20, hw)
    m[90:92, 120:122] = True  # 2x2 speck: polygon area 1 < min_area_px
    return m


# name, mask, expected number of parts with the default settings (0: dropped), minimum IoU of the rasterized
# polygons vs the mask with holes filled (None: no polygon expected). Smooth shapes >= 0.95; a circle of radius 6
# (113 px) loses more to a 1-px simplification tolerance.
CASES = [
    ("circle", circle(), 1, 0.95),
    ("small_circle_r6", circle((20, 20), 6), 1, 0.90),
    ("ellipse", ellipse(), 1, 0.95),
    ("rotated_rect", rotated_rect(), 1, 0.95),
    ("ring_with_hole", ring(), 1, 0.95),
    ("ring_with_island", ring_with_island(), 2, 0.95),
    ("two_blobs", two_blobs(), 2, 0.95),
    ("touching_border", touching_border(), 1, 0.95),
    ("corner_pinch", corner_pinch(), 2, 0.95),
    ("full_image", full(), 1, 0.95),
    ("blob_and_speck", blob_and_speck(), 1, 0.95),
    ("one_pixel", pixels((5, 5)), 0, None),
    ("two_pixels", pixels((5, 5), (5, 6)), 0, None),
    ("two_diagonal_pixels", pixels((5, 5), (6, 6)), 0, None),
    ("one_pixel_line", hline(), 0, None),
    ("empty", np.zeros(HW, bool), 0, None),
]
IDS = [c[0] for c in CASES]


def fill_holes(m: np.ndarray) -> np.ndarray:
    bg = np.pad(~m, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(bg, None, (0, 0), 2)
    return bg[1:-1, 1:-1] != 2


def rasterize(polys: list[np.ndarray], hw=HW) -> np.ndarray:
    out = np.zeros(hw, np.uint8)
    for p in polys:
        cv2.fillPoly(out, [np.round(p).astype(np.int32).reshape(-1, 1, 2)], 1)
    return out.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def instance(mask: np.ndarray, class_id=0, det_conf=0.5, sam_score=0.9, det_index=0) -> Instance:
    return Instance(class_id, det_conf, np.zeros(4, np.float32), sam_score, MaskCrop.from_full(mask), det_index)


# ----------------------------------------------------------------------------- default method
@pytest.mark.parametrize("name,mask,n_parts,min_iou", CASES, ids=IDS)
def test_polygons_are_valid_inside_and_faithful(name, mask, n_parts, min_iou):
    polys = mask_to_polygons(MaskCrop.from_full(mask), tolerance_px=DEFAULT_TOLERANCE_PX, min_area_px=4.0)
    assert len(polys) == n_parts
    h, w = mask.shape
    areas = []
    for p in polys:
        assert p.dtype == np.float64 and p.ndim == 2 and p.shape[1] == 2
        assert len(np.unique(p, axis=0)) >= 3
        assert (p[:, 0] >= 0).all() and (p[:, 0] <= w - 1).all()
        assert (p[:, 1] >= 0).all() and (p[:, 1] <= h - 1).all()
        poly = Polygon(p)
        assert poly.is_valid, shapely.is_valid_reason(poly)
        areas.append(poly.area)
    assert areas == sorted(areas, reverse=True)  # largest first
    if min_iou is not None:
        assert iou(rasterize(polys), fill_holes(mask)) >= min_iou


def test_hole_is_not_turned_into_an_object():
    m = ring()
    [p] = mask_to_polygons(MaskCrop.from_full(m), tolerance_px=0, min_area_px=0)
    r = rasterize([p])
    hole = fill_holes(m) & ~m
    assert hole.sum() > 400 and r[hole].all()  # the hole is inside the outer ring, filled
    assert iou(r, fill_holes(m)) == 1.0  # no simplification: exactly the filled mask


def test_island_in_hole_is_its_own_part():
    polys = mask_to_polygons(MaskCrop.from_full(ring_with_island()), tolerance_px=1.0, min_area_px=4.0)
    assert len(polys) == 2
    assert Polygon(polys[1]).within(Polygon(polys[0]))


@pytest.mark.parametrize(
    "name,mask",
    [("rect", np.pad(np.ones((20, 30), bool), ((10, 66), (7, 91)))), ("full", full())],
)
def test_rectangles_keep_their_corner_pixels(name, mask):
    [p] = mask_to_polygons(MaskCrop.from_full(mask), tolerance_px=1.0, min_area_px=4.0)
    ys, xs = np.nonzero(mask)
    corners = {(xs.min(), ys.min()), (xs.max(), ys.min()), (xs.max(), ys.max()), (xs.min(), ys.max())}
    assert {tuple(map(int, v)) for v in p} == corners


def test_multipart_largest_and_min_area():
    crop = MaskCrop.from_full(two_blobs())
    both = mask_to_polygons(crop, tolerance_px=1.0, min_area_px=4.0, multipart="all")
    [largest] = mask_to_polygons(crop, tolerance_px=1.0, min_area_px=4.0, multipart="largest")
    np.testing.assert_array_equal(largest, both[0])
    assert mask_to_polygons(crop, tolerance_px=1.0, min_area_px=1e5) == []


def test_larger_tolerance_gives_fewer_vertices():
    crop = MaskCrop.from_full(ellipse())
    counts = [len(mask_to_polygons(crop, tolerance_px=t, min_area_px=4)[0]) for t in (0, 0.5, 1.0, 2.0)]
    assert counts == sorted(counts, reverse=True) and counts[0] > 2 * counts[-1]


# ----------------------------------------------------------------------------- compat="ultralytics"
def random_blob_masks(n=8, seed=0, hw=HW) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = cv2.GaussianBlur(rng.standard_normal(hw).astype(np.float32), (0, 0), 5)
        out.append(field > np.quantile(field, 0.8))  # several parts, some touching the border
    return out


COMPAT_MASKS = [(n, m) for n, m, *_ in CASES] + [(f"noise{i}", m) for i, m in enumerate(random_blob_masks())]


@pytest.mark.parametrize("strategy", ["all", "largest"])
def test_compat_equals_ultralytics_masks2segments_on_the_full_mask(strategy):
    from ultralytics.utils.ops import masks2segments

    for name, m in COMPAT_MASKS:
        [expected] = masks2segments(m[None].astype(np.uint8), strategy=strategy)
        got = mask_to_polygons_ultralytics(MaskCrop.from_full(m), multipart=strategy)
        if len(np.unique(expected, axis=0)) < 3:  # degenerate: Ultralytics writes it, we drop it
            assert got == [], name
            continue
        assert len(got) == 1, name
        np.testing.assert_array_equal(got[0], expected.astype(np.float64), err_msg=name)


def test_compat_stage_matches_masks_xy():
    import torch
    from ultralytics.engine.results import Masks

    masks = [two_blobs(), touching_border(), ellipse()]
    outs = Polygonizer(compat="ultralytics")([instance(m) for m in masks])
    xy = Masks(torch.from_numpy(np.stack(masks)).float(), HW).xy
    for out, ref in zip(outs, xy):
        np.testing.assert_array_equal(out.polygons_xy_px[0], ref.astype(np.float64))


# ----------------------------------------------------------------------------- RLE and the stage
@pytest.mark.parametrize("name,mask", [(c[0], c[1]) for c in CASES], ids=IDS)
def test_rle_decodes_to_the_exact_mask(name, mask):
    rle = mask_to_rle(MaskCrop.from_full(mask))
    assert rle["size"] == list(HW) and isinstance(rle["counts"], str)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_stage_keeps_identity_drops_empty_and_never_mutates():
    masks = [circle(), np.zeros(HW, bool), pixels((3, 3)), two_blobs(), ring()]
    insts = [instance(m, class_id=10 + i, det_conf=0.1 * (i + 1), sam_score=0.5 + 0.1 * i, det_index=i)
             for i, m in enumerate(masks)]  # fmt: skip
    before = [i.mask.bitmap.copy() for i in insts]
    out = Polygonizer(with_rle=True)(insts)
    assert [o.class_id for o in out] == [10, 13, 14]  # the empty and 1-pixel masks are dropped, no shift
    for o, i in zip(out, [insts[0], insts[3], insts[4]]):
        assert isinstance(o, PolygonInstance)
        assert (o.det_conf, o.sam_score) == (i.det_conf, i.sam_score)
        assert o.area_px == int(i.mask.to_full().sum()) and o.bbox_xywh_px == i.mask.bbox_xywh_px
        decoded = mask_utils.decode({**o.rle, "counts": o.rle["counts"].encode()})
        np.testing.assert_array_equal(decoded, i.mask.to_full())
    assert len(out[1].polygons_xy_px) == 2
    for b, i in zip(before, insts):
        np.testing.assert_array_equal(b, i.mask.bitmap)
    assert Polygonizer()(insts)[0].rle is None
    assert Polygonizer()([]) == []


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tolerance_px": -1}, "tolerance_px"),
        ({"tolerance_px": float("nan")}, "tolerance_px"),
        ({"min_area_px": -0.5}, "min_area_px"),
        ({"multipart": "join"}, "multipart"),
        ({"compat": "supervision"}, "compat"),
    ],
)
def test_bad_settings_fail_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Polygonizer(**kwargs)


def test_bad_mask_type():
    with pytest.raises(TypeError, match="MaskCrop.from_full"):
        mask_to_polygons(circle(), tolerance_px=1, min_area_px=4, multipart="all")
