"""CVAT export (annotator.review.cvat): what CVAT's import library (datumaro) and pycocotools read back.

The fast tests use a hand-made run (a two-part mask, names needing XML escapes); the slow one annotates
synthetic images in two sub-folders with the shapes detector and a random-weight SAM 2, exports both styles
and imports them with datumaro in a subprocess.

datumaro pins versions this project's environment does not use (pillow, pandas, pyarrow, opencv-headless), so
it lives in a virtual environment of its own: ``$ANNOTATOR_DATUMARO_PYTHON`` (a python with datumaro), else the
current interpreter if it has datumaro, else a venv the test builds once with pip under
``$ANNOTATOR_TEST_CACHE`` (default ``~/.cache/annotator-tests``), about 30 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from annotator.finished import FinishedImage
from annotator.records import PolygonInstance
from annotator.review.cvat import COCO_PATH, LABELS_PATH, SCORE_ATTRIBUTES, XML_PATH, export_cvat

DATUMARO_VERSION = "1.13.12"

# Reads an export with datumaro and prints what it got as JSON (run with the datumaro venv's python).
_READ_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import datumaro as dm
    path, fmt = sys.argv[1], sys.argv[2]
    ds = dm.Dataset.import_from(path, fmt)
    labels = ds.categories()[dm.AnnotationType.label]
    items = []
    for item in ds:
        anns = []
        for a in item.annotations:
            if a.type != dm.AnnotationType.polygon:
                continue
            attrs = {k: v for k, v in a.attributes.items() if isinstance(v, (int, float, str, bool))}
            anns.append({"label": labels[a.label].name, "points": [float(v) for v in a.points],
                         "group": int(a.group or 0), "z_order": int(a.z_order), "attributes": attrs})
        items.append({"id": item.id, "subset": item.subset, "media": getattr(item.media, "path", None),
                      "size": list(item.media.size) if item.media is not None and item.media.size else None,
                      "annotations": anns})
    print(json.dumps({"version": dm.__version__, "labels": [l.name for l in labels.items], "items": items}))
    """
)


# ---------------------------------------------------------------------------------------------- helpers


@dataclass
class _Run:
    """Stand-in for FinishedRun: what export_cvat reads."""

    output_dir: Path
    data_root: Path
    names: dict
    imgs: list

    model_version = "det.pt@0123456789ab+sam.pt@ba9876543210"

    def images(self):
        yield from self.imgs


def _square(x0: float, y0: float, s: float) -> np.ndarray:
    return np.array([[x0, y0], [x0, y0 + s], [x0 + s, y0 + s], [x0 + s, y0]], float)


def _fake_run(tmp_path: Path) -> _Run:
    root = tmp_path / "data"
    two_parts = PolygonInstance(1, 0.8, 0.5, [_square(10, 10, 20), _square(50, 50, 5)], 467, (10.0, 10.0, 46.0, 46.0))
    one_part = PolygonInstance(0, 0.9, 0.95, [_square(60, 5, 10)], 121, (60.0, 5.0, 11.0, 11.0))
    imgs = [
        FinishedImage("a/0000.jpg", root / "a/0000.jpg", (80, 100), "ok", (two_parts, one_part)),
        FinishedImage("b/deep/0000.jpg", root / "b/deep/0000.jpg", (80, 100), "ok", (one_part,)),
        FinishedImage("b/empty.jpg", root / "b/empty.jpg", (40, 30), "empty", ()),
    ]
    return _Run(tmp_path / "out", root, {0: 'circle & "co"', 1: "<rect>"}, imgs)


def _parts(inst: PolygonInstance) -> list[np.ndarray]:
    """The parts the exports must hold: >= 3 distinct vertices, moved to pixel centres (+0.5)."""
    return [np.asarray(p, float) + 0.5 for p in inst.polygons_xy_px if len(np.unique(np.asarray(p), axis=0)) >= 3]


def _expected(run) -> dict[str, list[tuple[str, np.ndarray, dict, int]]]:
    """rel_path -> [(label, points (K, 2), score attributes, instance index)] for every part, in export order."""
    out = {}
    for img in run.images():
        rows = []
        for k, inst in enumerate(img.instances):
            attrs = {
                "score": round(inst.det_conf * inst.sam_score, 4),
                "det_conf": round(inst.det_conf, 4),
                "sam_score": round(inst.sam_score, 4),
            }
            rows += [(run.names[inst.class_id], p, attrs, k) for p in _parts(inst)]
        out[img.rel_path] = rows
    return out


def _check_pycocotools(coco_json: Path, expected: dict) -> None:
    from pycocotools.coco import COCO

    gt = COCO(str(coco_json))
    by_name = {im["file_name"]: im for im in gt.dataset["images"]}
    assert sorted(by_name) == sorted(expected)
    anns = gt.dataset["annotations"]
    assert sum(len(a["segmentation"]) for a in anns) == sum(len(v) for v in expected.values())
    by_id = {im["id"]: im for im in gt.dataset["images"]}
    for a in anns:
        assert a["score"] == a["attributes"]["score"] and set(SCORE_ATTRIBUTES) <= set(a["attributes"])
        assert a["attributes"]["occluded"] is False
        m = gt.annToMask(a)
        assert m.shape == (by_id[a["image_id"]]["height"], by_id[a["image_id"]]["width"])
        assert int(m.sum()) == a["area"] > 0
    if anns:
        # as detections (loadRes takes segmentations as RLE): the same masks, ranked by the written score
        res = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": gt.annToRLE(a),
                "score": a["score"]} for a in anns]  # fmt: skip
        dt = gt.loadRes(res)
        for a, d in zip(anns, dt.dataset["annotations"]):
            assert d["score"] == a["score"] and int(d["area"]) == a["area"]
            assert np.array_equal(dt.annToMask(d), gt.annToMask(a))


def _xml_rows(xml_path: Path) -> dict[str, list[tuple[str, np.ndarray, dict, int]]]:
    root = ET.parse(xml_path).getroot()
    out = {}
    for image in root.iter("image"):
        rows = []
        for poly in image.iter("polygon"):
            assert (poly.get("source"), poly.get("occluded"), poly.get("z_order")) == ("auto", "0", "0")
            pts = np.array([[float(v) for v in pair.split(",")] for pair in poly.get("points").split(";")])
            attrs = {a.get("name"): float(a.text) for a in poly.iter("attribute")}
            rows.append((poly.get("label"), pts, attrs, int(poly.get("group_id", 0))))
        out[image.get("name")] = rows
    return out


# ---------------------------------------------------------------------------------------------- fast tests


def test_both_styles_from_a_hand_made_run(tmp_path):
    run = _fake_run(tmp_path)
    dest = tmp_path / "cvat"
    written = export_cvat(run, dest)
    assert written == [dest / COCO_PATH, dest / XML_PATH, dest / LABELS_PATH]
    assert (dest / "images").is_dir() and not any((dest / "images").iterdir())
    assert not [p for p in dest.rglob("*") if p.name.startswith(".")], "temporary files left behind"
    expected = _expected(run)

    _check_pycocotools(dest / COCO_PATH, expected)
    doc = json.loads((dest / COCO_PATH).read_text())
    assert [c["name"] for c in doc["categories"]] == ['circle & "co"', "<rect>"]
    two = next(a for a in doc["annotations"] if len(a["segmentation"]) == 2)
    assert two["attributes"] == {"occluded": False, "score": 0.4, "det_conf": 0.8, "sam_score": 0.5}

    root = ET.parse(dest / XML_PATH).getroot()
    assert root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task.findtext("size") == "3" and task.findtext("stop_frame") == "2"
    labels = task.findall("labels/label")
    assert [lb.findtext("name") for lb in labels] == ['circle & "co"', "<rect>"]
    for lb in labels:
        specs = {a.findtext("name"): a.findtext("input_type") for a in lb.iter("attribute")}
        assert specs == dict.fromkeys(SCORE_ATTRIBUTES, "number")
    images = root.findall("image")
    assert [(i.get("id"), i.get("name"), i.get("width"), i.get("height")) for i in images] == [
        ("0", "a/0000.jpg", "100", "80"), ("1", "b/deep/0000.jpg", "100", "80"), ("2", "b/empty.jpg", "30", "40"),
    ]  # fmt: skip
    rows = _xml_rows(dest / XML_PATH)
    for rel, exp in expected.items():
        got = rows[rel]
        assert len(got) == len(exp)
        for (label, pts, attrs, _), (elabel, epts, eattrs, _) in zip(got, exp):
            assert label == elabel and attrs == eattrs
            np.testing.assert_allclose(pts, epts, atol=1e-3)
    groups = [g for _, _, _, g in rows["a/0000.jpg"]]
    assert groups == [1, 1, 0], "the two parts of one mask share a group id; a single part has none"

    labels_json = json.loads((dest / LABELS_PATH).read_text())
    assert [lb["name"] for lb in labels_json] == ['circle & "co"', "<rect>"]
    assert [a["name"] for a in labels_json[0]["attributes"]] == list(SCORE_ATTRIBUTES)

    # idempotent: a second export changes no byte and touches no file
    mtimes = {p: p.stat().st_mtime_ns for p in written}
    assert export_cvat(run, dest) == written
    assert {p: p.stat().st_mtime_ns for p in written} == mtimes


def test_single_style_and_bad_arguments(tmp_path):
    run = _fake_run(tmp_path)
    assert export_cvat(run, tmp_path / "x", style="xml") == [tmp_path / "x" / XML_PATH, tmp_path / "x" / LABELS_PATH]
    assert not (tmp_path / "x" / "annotations").exists() and not (tmp_path / "x" / "images").exists()
    assert export_cvat(run, tmp_path / "c", style="coco")[0] == tmp_path / "c" / COCO_PATH
    assert not (tmp_path / "c" / XML_PATH).exists()
    with pytest.raises(ValueError, match="style"):
        export_cvat(run, tmp_path / "y", style="yolo")
    with pytest.raises(ValueError, match="images"):
        export_cvat(run, tmp_path / "y", images="link")
    from annotator.errors import ConfigError

    with pytest.raises(ConfigError, match="missing"):  # the fake run's images do not exist
        export_cvat(run, tmp_path / "z", images="copy")


# ---------------------------------------------------------------------------------------------- datumaro


def _datumaro_python() -> str:
    """A python that imports datumaro (see the module docstring)."""
    env = os.environ.get("ANNOTATOR_DATUMARO_PYTHON")
    if env:
        return env
    probe = subprocess.run([sys.executable, "-c", "import datumaro"], capture_output=True, timeout=120)
    if probe.returncode == 0:
        return sys.executable
    cache = Path(os.environ.get("ANNOTATOR_TEST_CACHE", Path.home() / ".cache" / "annotator-tests"))
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    venv = cache / f"datumaro-{DATUMARO_VERSION}-{tag}"
    python = venv / "bin" / "python"
    if python.is_file():
        return str(python)
    build = cache / f".{venv.name}.{os.getpid()}"
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        subprocess.run([base, "-m", "venv", str(build)], check=True, capture_output=True, timeout=300)
        pip = subprocess.run(
            [str(build / "bin" / "python"), "-m", "pip", "install", "-q", f"datumaro=={DATUMARO_VERSION}"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if pip.returncode != 0:
            pytest.fail(
                f"pip install datumaro=={DATUMARO_VERSION} failed (set ANNOTATOR_DATUMARO_PYTHON): {pip.stderr[-2000:]}"
            )
        build.rename(venv)  # a venv's python finds its site-packages relative to itself: renaming keeps it working
    finally:
        if build.exists():
            import shutil

            shutil.rmtree(build, ignore_errors=True)
    return str(python)


def _datumaro_read(python: str, path: Path, fmt: str) -> dict:
    r = subprocess.run(
        [python, "-c", _READ_SCRIPT, str(path), fmt], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert r.returncode == 0, f"datumaro could not import {path} as {fmt}:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check_datumaro(read: dict, expected: dict, names: dict, fmt: str) -> None:
    assert read["version"] == DATUMARO_VERSION
    assert read["labels"] == [names[c] for c in sorted(names)]
    items = {it["id"]: it for it in read["items"]}
    assert len(read["items"]) == len(expected)
    assert sorted(items) == sorted(str(Path(rel).with_suffix("")) for rel in expected), "sub-folders kept in ids"
    for rel, exp in expected.items():
        item = items[str(Path(rel).with_suffix(""))]
        assert item["media"] and item["media"].endswith(rel), (item["media"], rel)
        got = item["annotations"]
        assert len(got) == len(exp), (fmt, rel)
        # datumaro's COCO reader lists annotations in reverse: match each part by label and vertices
        key = lambda label, pts: (label, tuple(np.round(np.asarray(pts, float).ravel(), 1)))  # noqa: E731
        by_key = {key(g["label"], g["points"]): g for g in got}
        assert len(by_key) == len(got)
        groups: dict[int, set] = {}
        for label, pts, attrs, inst in exp:
            g = by_key[key(label, pts)]
            np.testing.assert_allclose(np.array(g["points"]).reshape(-1, 2), pts, atol=1e-3)
            for k, v in attrs.items():
                assert g["attributes"][k] == pytest.approx(v, abs=1e-9), (fmt, rel, k)
            assert g["z_order"] == 0
            groups.setdefault(inst, set()).add(g["group"])
        # the parts of one instance share one group, different multi-part instances never do
        multi = [next(iter(gs)) for inst, gs in groups.items() if sum(e[3] == inst for e in exp) > 1]
        assert all(len(gs) == 1 for gs in groups.values()) and 0 not in multi and len(set(multi)) == len(multi)


@pytest.mark.slow
def test_datumaro_imports_a_real_run(tmp_path, sam2_t_ckpt, shapes_detector):
    from annotator.api import run as annotate
    from annotator.config import make_config
    from annotator.finished import open_finished
    from annotator.synthetic import write_synthetic_dataset

    python = _datumaro_python()
    data = write_synthetic_dataset(tmp_path / "shapes", 6, subdirs=("cam1", "cam2/night"), labels=None, seed=3)
    out = tmp_path / "out"
    annotate(
        make_config(
            data=str(data / "images"), det_model=str(shapes_detector), sam_model=str(sam2_t_ckpt),
            device="cpu", output_dir=str(out), sam_min_score=0.0,
        )
    )  # fmt: skip
    run = open_finished(out)
    expected = _expected(run)
    assert len(expected) == 6 and {Path(r).parent.as_posix() for r in expected} == {"cam1", "cam2/night"}
    assert sum(len(v) for v in expected.values()) > 0, "the detector found nothing: the test checks nothing"

    dest = tmp_path / "cvat"
    written = export_cvat(run, dest, style="both", images="copy")
    assert written == [dest / COCO_PATH, dest / XML_PATH, dest / LABELS_PATH]
    copied = sorted(p.relative_to(dest / "images").as_posix() for p in (dest / "images").rglob("*.jpg"))
    assert copied == sorted(expected)
    _check_pycocotools(dest / COCO_PATH, expected)

    coco = _datumaro_read(python, dest, "coco_instances")
    _check_datumaro(coco, expected, run.names, "coco_instances")
    assert {it["subset"] for it in coco["items"]} == {"default"}
    cvat = _datumaro_read(python, dest, "cvat")
    _check_datumaro(cvat, expected, run.names, "cvat")

    # annotations alone (no images): the same files, byte for byte; pycocotools still reads them
    bare = tmp_path / "bare"
    export_cvat(run, bare)
    for rel in (COCO_PATH, XML_PATH, LABELS_PATH):
        assert (bare / rel).read_bytes() == (dest / rel).read_bytes()
