"""annotator.formats.yolo (+ annotator.io_atomic): rows Ultralytics reads back, identical to masks.xyn in compat."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from annotator.errors import OutputError
import yaml

from annotator.formats.yolo import (
    data_yaml_text,
    instances_to_yolo_lines,
    merge_multi_segment,
    polygons_to_yolo_xy,
    write_yolo_labels,
    yolo_label_relpath,
)
from annotator.io_atomic import atomic_write_bytes, atomic_write_text, atomic_writer
from annotator.polygons import Polygonizer
from annotator.records import Instance, MaskCrop, PolygonInstance

os.environ.setdefault("YOLO_OFFLINE", "1")

HW = (60, 80)  # (H, W)


def disk(c, r, hw=HW) -> np.ndarray:
    m = np.zeros(hw, np.uint8)
    cv2.circle(m, c, r, 1, -1)
    return m.astype(bool)


def instance(mask: np.ndarray, class_id: int, det_conf: float = 0.75) -> Instance:
    return Instance(class_id, det_conf, np.zeros(4, np.float32), 0.9, MaskCrop.from_full(mask), 0)


MASKS = {
    "disk": disk((20, 20), 12),
    "two_parts": disk((15, 45), 8) | disk((60, 15), 9),
    "ring": disk((55, 35), 20) & ~disk((55, 35), 7),
    "border": disk((0, 0), 15),
    "full": np.ones(HW, bool),
}


def poly_inst(polys, class_id=0, det_conf=0.5) -> PolygonInstance:
    polys = [np.asarray(p, np.float64) for p in polys]
    return PolygonInstance(class_id, det_conf, 0.9, polys, 100, (0.0, 0.0, 10.0, 10.0))


def parse(line: str) -> tuple[int, np.ndarray]:
    parts = line.split()
    return int(parts[0]), np.array(parts[1:], np.float64)


# ----------------------------------------------------------------------------- merge_multi_segment
@pytest.mark.parametrize("n_segments", [2, 3, 4, 5])
@pytest.mark.parametrize("seed", range(4))
def test_merge_multi_segment_is_identical_to_ultralytics(n_segments, seed):
    from ultralytics.data.converter import merge_multi_segment as ultra_merge

    rng = np.random.default_rng(seed)
    segs = [rng.integers(0, 300, size=(rng.integers(3, 12), 2)) for _ in range(n_segments)]
    ours = merge_multi_segment([s.copy() for s in segs])
    ref = ultra_merge([s.copy() for s in segs])
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- instances_to_yolo_lines
def test_rows_are_normalised_by_width_and_height():
    sq = [[8, 6], [8, 30], [40, 30], [40, 6]]
    [line] = instances_to_yolo_lines([poly_inst([sq], class_id=3)], HW, decimals=4)
    cls, v = parse(line)
    assert cls == 3
    np.testing.assert_allclose(v.reshape(-1, 2), np.array(sq) / [80, 60], atol=1e-4)
    assert line.split()[1] == "0.1000"


@pytest.mark.parametrize(
    "polys,kwargs,n_values",
    [
        ([[[0, 0], [0, 5], [5, 5]]], {}, 6),
        ([[[0, 0], [0, 5], [5, 5]]], {"with_conf": True}, 7),
        ([[[0, 0], [0, 5], [5, 5]], [[20, 20], [20, 30], [30, 30]]], {}, 2 * (4 + 4)),  # joined, closed rings
        ([[[0, 0], [0, 5], [5, 5]], [[20, 20], [20, 30], [30, 30]]], {"multipart": "largest"}, 6),
        ([[[0, 0], [0, 5]]], {}, None),  # 2 points: skipped
        ([], {}, None),  # no polygon: skipped
    ],
)
def test_row_layout(polys, kwargs, n_values):
    lines = instances_to_yolo_lines([poly_inst(polys, det_conf=0.25)], HW, **kwargs)
    if n_values is None:
        assert lines == []
        return
    [line] = lines
    assert len(line.split()) == 1 + n_values
    if kwargs.get("with_conf"):
        assert line.split()[-1] == "0.250000"


def test_join_equals_ultralytics_merge():
    a, b = np.array([[0, 0], [0, 9], [9, 9], [9, 0]], float), np.array([[40, 40], [40, 50], [50, 50]], float)
    np.testing.assert_array_equal(polygons_to_yolo_xy([a, b]), np.concatenate(merge_multi_segment([a, b])))


@pytest.mark.parametrize("bad", [{"image_hw": (0, 10)}, {"decimals": -1}, {"multipart": "all"}])
def test_bad_arguments(bad):
    args = {"image_hw": HW, **bad}
    with pytest.raises(ValueError):
        instances_to_yolo_lines([poly_inst([[[0, 0], [0, 5], [5, 5]]])], args.pop("image_hw"), **args)


def test_compat_rows_equal_ultralytics_masks_xyn():
    import torch
    from ultralytics.engine.results import Masks

    masks = list(MASKS.values())
    out = Polygonizer(compat="ultralytics")([instance(m, 0) for m in masks])
    lines = instances_to_yolo_lines(out, HW, decimals=9)
    xyn = Masks(torch.from_numpy(np.stack(masks)).float(), HW).xyn
    assert len(lines) == len(xyn)
    for line, ref in zip(lines, xyn):
        np.testing.assert_allclose(parse(line)[1].reshape(-1, 2), ref, atol=1e-6)


# ----------------------------------------------------------------------------- Ultralytics reads what we write
def verify(tmp_path, lines, nc):
    from ultralytics.data.utils import verify_image_label

    im_file, lb_file = tmp_path / "images" / "a.png", tmp_path / "labels" / "a.txt"
    im_file.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(im_file), np.full((*HW, 3), 127, np.uint8))
    write_yolo_labels(lb_file, lines)
    # (im_file, lb_file, prefix, keypoint, num_cls, nkpt, ndim, single_cls)
    return verify_image_label((str(im_file), str(lb_file), "", False, nc, 0, 0, False))


@pytest.mark.parametrize(
    "mask_names,class_ids,nc,corrupt",
    [
        (["disk"], [0], 1, 0),
        (list(MASKS), [0, 1, 2, 1, 0], 3, 0),
        (["two_parts"], [4], 5, 0),
        (["disk", "ring"], [0, 3], 3, 1),  # class 3 with nc=3: Ultralytics rejects the file
    ],
)
@pytest.mark.parametrize("compat", ["none", "ultralytics"])
def test_labels_pass_ultralytics_verify_image_label(tmp_path, mask_names, class_ids, nc, corrupt, compat):
    insts = [instance(MASKS[n], c) for n, c in zip(mask_names, class_ids)]
    lines = instances_to_yolo_lines(Polygonizer(compat=compat)(insts), HW)
    assert len(lines) == len(insts)
    im_file, lb, shape, segments, _kpts, nm, nf, ne, nc_bad, msg = verify(tmp_path, lines, nc)
    assert (nm, nf, ne, nc_bad) == (0, 1, 0, corrupt), msg
    if not corrupt:
        assert shape == HW and len(segments) == len(lines) and lb[:, 0].tolist() == class_ids
        assert ((lb[:, 1:] >= 0) & (lb[:, 1:] <= 1)).all()


def test_empty_label_file_is_an_image_without_objects(tmp_path):
    *_, nm, nf, ne, nc_bad, msg = verify(tmp_path, [], 1)
    assert (nm, nf, ne, nc_bad) == (0, 1, 1, 0), msg
    assert (tmp_path / "labels" / "a.txt").read_bytes() == b""


# ----------------------------------------------------------------------------- paths and data.yaml
@pytest.mark.parametrize(
    "rel,expected",
    [
        ("a.jpg", "a.txt"),
        ("sub/a.jpg", "sub/a.txt"),
        ("sub/dir.v2/a.b.PNG", "sub/dir.v2/a.b.txt"),
        ("noext", "noext.txt"),
        ("/abs/a.jpg", ValueError),
        ("../a.jpg", ValueError),
        ("sub\\a.jpg", "sub\\a.txt"),  # a backslash is a POSIX name character: one file, not a folder
        ("", ValueError),
    ],
)
def test_yolo_label_relpath(rel, expected):
    if expected is ValueError:
        with pytest.raises(ValueError, match="relative"):
            yolo_label_relpath(rel)
    else:
        assert yolo_label_relpath(rel) == expected


TRICKY = {0: "person", 1: "yes", 2: "1", 3: "a: b", 4: "null", 5: "Straße 🚗", 6: "#hash", 7: "'q' \"x\"", 8: ""}


def test_data_yaml_round_trips_tricky_names_and_loads_in_ultralytics(tmp_path):
    from ultralytics.data.utils import check_det_dataset

    text = data_yaml_text(TRICKY, path=tmp_path, train="images", val="images")
    assert yaml.safe_load(text)["names"] == TRICKY
    (tmp_path / "images").mkdir()
    (tmp_path / "data.yaml").write_text(text, encoding="utf-8")
    data = check_det_dataset(str(tmp_path / "data.yaml"), autodownload=False)
    assert data["nc"] == len(TRICKY) and data["names"] == TRICKY


@pytest.mark.parametrize("names", [{}, {1: "a"}, {0: "a", 2: "c"}, {-1: "x", 0: "a"}])
def test_data_yaml_rejects_gaps(names):
    with pytest.raises(ValueError, match="0..n-1"):
        data_yaml_text(names)


# ----------------------------------------------------------------------------- atomic writes
def test_write_labels_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "deep" / "x.txt"
    write_yolo_labels(target, ["0 0.1 0.1 0.2 0.1 0.2 0.2"])
    write_yolo_labels(target, ["1 0.5 0.5 0.6 0.5 0.6 0.6", "2 0.1 0.1 0.2 0.1 0.2 0.2"])
    assert target.read_text().splitlines()[0].startswith("1 ") and len(target.read_text().splitlines()) == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.txt"]
    with pytest.raises(ValueError, match="newlines"):
        write_yolo_labels(target, ["0 1 2\n3"])


def test_atomic_writer_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_writer(target, "wb") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    with pytest.raises(OutputError, match="is a folder"):
        atomic_write_text(tmp_path, "x")
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
