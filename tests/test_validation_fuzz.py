"""Every file a user hands in is either valid typed records or one InputFileError line: never a traceback,
never a hang, never a NaN or an out-of-image box on its way to SAM (issue 18, items 2 and 3).

Two levels:

* parser level (Hypothesis, many examples, cheap): valid documents of each format (points JSON, COCO prompts,
  YOLO prompt rows, COCO and YOLO ground truth, config YAML) are mutated (keys dropped, wrong types, ``null``,
  huge / NaN / negative numbers, deep nesting, duplicates, out-of-range ids and coordinates) and read by the
  real readers; what they return is checked against the bounds the rest of the code trusts.
* CLI level (few examples, each a real ``python -m annotator`` process with a timeout): exit 2, exactly one
  stderr line naming the file, no output written; the hangs of the issue (FIFOs named ``*.txt``, a class id
  of 10**12, a YAML alias bomb, 100,000-deep nesting) end in seconds.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from annotator.errors import ConfigError, InputFileError
from annotator.finished import FinishedImage
from annotator.records import PolygonInstance

HW = (48, 64)  # (h, w) of every image the parsed prompts are applied to
NAMES = {0: "a", 1: "b"}
TIME_BOUND_S = 10.0  # one parse of a small document; generous for a loaded 2-core machine
REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)

# --------------------------------------------------------------------------------------- valid documents

POINTS = {"names": ["a", "b"], "images": {
    "x.png": [{"class": "a", "points": [[10, 12], [20, 5]], "labels": [1, 0]}, {"class": 1, "box": [5, 5, 30, 40]}],
    "sub/y.png": [{"class": 0, "points": [[3, 4]]}],
}}  # fmt: skip
COCO_PROMPTS = {
    "images": [{"id": 1, "file_name": "x.png", "width": 64, "height": 48}, {"id": 7, "file_name": "sub/y.png"}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30], "attributes": {"occluded": False}},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [[10, 10, 30, 10, 30, 30]]},
        {"id": 3, "image_id": 7, "category_id": 2, "bbox": [1, 1, 10, 10]},
    ],
}
COCO_GT = {
    "images": [{"id": 1, "file_name": "x.png", "width": 64, "height": 48}, {"id": 2, "file_name": "sub/y.png"}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[5, 5, 25, 5, 25, 35, 5, 35]], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "segmentation": {"size": [48, 64], "counts": [100, 20, 48 * 64 - 120]}},
    ],
}
YOLO_ROWS = ["0 0.5 0.5 0.25 0.5", "1 0.1 0.1 0.4 0.1 0.4 0.6", "1 0.2 0.3 0.1 0.1"]
CONFIG = {"conf": 0.3, "format": "coco", "imgsz": 320, "classes": [0, 1], "ray": {"num_cpus": 2}, "data": "images"}

# --------------------------------------------------------------------------------------- mutations

HOSTILE = [None, "", "x", "./x.png", "../x.png", "/abs.png", -1, 0, 1, 10**12, 10**30, 2**63, 1e308, -1e308,
           float("nan"), float("inf"), float("-inf"), True, [], {}, [[1, 2]], [1, 2, 3], {"a": 1}, 0.5, 1.5, -0.5]  # fmt: skip
DEEP = "__DEEP__"


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, data) -> object:
    """``doc`` with 1-3 random edits: replace a value (hostile scalar, deep nesting), nudge a number (image
    edges, zero sizes), drop a key or item, duplicate a list item, rename a dict key."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = data.draw(st.sampled_from(paths))
        op = data.draw(st.sampled_from(["replace"] * 4 + ["nudge"] * 4 + ["drop", "drop", "dup", "rename", "deep"]))
        if not path:
            if op in ("replace", "deep"):
                doc = copy.deepcopy(data.draw(st.sampled_from(HOSTILE + [[doc], DEEP])))
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        k = path[-1]
        if op == "replace":
            parent[k] = copy.deepcopy(data.draw(st.sampled_from(HOSTILE)))  # never edit HOSTILE's own lists
        elif op == "nudge" and isinstance(parent[k], (int, float)) and not isinstance(parent[k], bool):
            parent[k] = parent[k] + data.draw(st.sampled_from([-1, 1, 0.3, -0.3, 1e-9, -1e-9, 60, -60]))  # edges
        elif op == "deep":
            parent[k] = DEEP
        elif op == "drop":
            del parent[k]
        elif op == "dup" and isinstance(parent[k], list) and parent[k]:
            parent[k].append(copy.deepcopy(parent[k][0]))
        elif op == "rename" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(["./x.png", "x.png", "names", "zz", "id", "1"]))] = parent.pop(k)
    return doc


def _json_text(doc, data) -> str:
    text = json.dumps(doc, allow_nan=True)  # NaN / Infinity tokens on purpose
    depth = data.draw(st.sampled_from([40, 1000, 100_000]))
    text = text.replace(json.dumps(DEEP), "[" * depth + "]" * depth)
    edit = data.draw(st.sampled_from(["none"] * 6 + ["truncate", "dupkey", "bytes"]))
    if edit == "truncate" and text:
        text = text[: data.draw(st.integers(0, len(text) - 1))]
    elif edit == "dupkey" and text.startswith("{") and len(text) > 2:
        first = text[1 : text.find(",") if "," in text else -1]
        text = "{" + first + ", " + text[1:] if first.strip() else text
    elif edit == "bytes":
        i = data.draw(st.integers(0, len(text)))
        text = text[:i] + data.draw(st.sampled_from(["\x00", "\ufeff", "\\", '"', "}", "]", "1e999", "-", "\udcff"])) + text[i:]
    return text


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
    return path


@contextmanager
def _within(seconds: float):
    """Fail (instead of hanging) when the block runs longer than ``seconds``: a SIGALRM interrupts even a
    blocking ``open`` of a FIFO."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _bounded(fn):
    """``fn()`` within the time bound; an InputFileError is an accepted outcome (returned, not raised)."""
    t0 = time.perf_counter()
    try:
        with _within(TIME_BOUND_S):
            got = fn()
        event("accepted")
        return got
    except InputFileError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(e.path) and "expected" in msg
        event(f"refused: {e.expected[:30]}")  # --hypothesis-show-statistics: what the fuzzers reach
        return e
    finally:
        assert time.perf_counter() - t0 < TIME_BOUND_S


# --------------------------------------------------------------------------------------- what SAM may get


def _check_prompts(p, names: dict[int, str], hw=HW) -> None:
    """The invariants the pipeline trusts: finite numbers, prompt boxes inside the image with positive size,
    points inside, class ids within the names, kept polygons inside the image."""
    h, w = hw
    d = p.boxes
    xy = np.asarray(d.xyxy_px, np.float64).reshape(-1, 4)
    assert np.isfinite(xy).all()
    prompt = np.asarray(d.box_is_prompt, bool) if getattr(d, "box_is_prompt", None) is not None else np.ones(len(xy), bool)
    b = xy[prompt]
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (xy >= 0).all() and (xy[:, [0, 2]] <= w).all() and (xy[:, [1, 3]] <= h).all()
    assert all(int(c) in names for c in d.class_ids)
    if getattr(d, "points_xy_px", None) is not None and len(xy):
        pts = np.asarray(d.points_xy_px)[np.asarray(d.point_labels) >= 0]
        assert np.isfinite(pts).all() and (pts >= 0).all() and (pts[:, 0] <= w).all() and (pts[:, 1] <= h).all()
    for inst in p.kept:
        assert inst.class_id in names
        for part in inst.polygons_xy_px:
            part = np.asarray(part)
            assert len(part) >= 3 and np.isfinite(part).all() and (part >= 0).all()
            assert (part[:, 0] <= w).all() and (part[:, 1] <= h).all()


def _apply(src, keys) -> None:
    for k in keys:
        got = _bounded(lambda: src.for_image(k, HW))
        if not isinstance(got, InputFileError):
            _check_prompts(got, src.names)


# --------------------------------------------------------------------------------------- parser level


@FUZZ
@given(st.data())
def test_points_file_mutations(tmp_path_factory, data):
    from annotator.prompt_points import PointPromptSource

    path = _write(tmp_path_factory.mktemp("pts") / "points.json", _json_text(_mutate(POINTS, data), data))
    src = _bounded(lambda: PointPromptSource(path, path.parent))
    if isinstance(src, InputFileError):
        return
    assert src.names and all(isinstance(k, int) and 0 <= k <= 99_999 for k in src.names)
    assert len(set(src._by_file)) == len(src._by_file) and not any(k.startswith(("./", "/")) for k in src._by_file)
    _apply(src, list(src._by_file) + ["x.png", "missing.png"])


@FUZZ
@given(st.data())
def test_coco_prompt_mutations(tmp_path_factory, data):
    from annotator.prompts import LabelBoxSource

    path = _write(tmp_path_factory.mktemp("coco") / "boxes.json", _json_text(_mutate(COCO_PROMPTS, data), data))
    src = _bounded(lambda: LabelBoxSource(path, path.parent))
    if isinstance(src, InputFileError):
        return
    assert list(src.names) == list(range(len(src.names)))
    _apply(src, list(src._coco) + ["x.png"])


def _yolo_row(data) -> str:
    cls = data.draw(st.sampled_from(["0", "1", "-1", "2", "1000000000000", "x", "1.5", "0"]))
    n = data.draw(st.sampled_from([0, 1, 4, 4, 5, 6, 6, 8, 9]))
    num = st.one_of(st.floats(-0.5, 1.5), st.floats(0, 1), st.sampled_from(["nan", "inf", "-inf", "1e999", "abc", "0x1"]))
    return " ".join([cls] + [str(data.draw(num)) for _ in range(n)])


def _yolo_text(data) -> str:
    rows = list(YOLO_ROWS)
    for _ in range(data.draw(st.integers(0, 3))):
        rows.insert(data.draw(st.integers(0, len(rows))), _yolo_row(data))
    if data.draw(st.booleans()):
        rows.pop(data.draw(st.integers(0, len(rows) - 1)))
    return "\n".join(rows) + "\n"


@FUZZ
@given(st.data())
def test_yolo_prompt_row_mutations(tmp_path_factory, data):
    from annotator.prompts import LabelBoxSource

    root = tmp_path_factory.mktemp("yolo")
    labels = root / "labels"
    _write(labels / "x.txt", _yolo_text(data))
    _write(labels / "sub" / "y.txt", _yolo_text(data))
    if data.draw(st.booleans()):
        names = data.draw(st.sampled_from([["a", "b"], {"0": "a", "1": "b"}, ["a", "a"], {"-1": "a"}, "ab", None, [None]]))
        _write(root / "data.yaml", yaml.safe_dump({"names": names}))
    src = _bounded(lambda: LabelBoxSource(labels, root / "images", check_all=True))
    if isinstance(src, InputFileError):
        return
    _apply(src, ["x.png", "sub/y.png", "none.png"])


def _ours() -> dict[str, FinishedImage]:
    sq = np.array([[5, 5], [25, 5], [25, 35], [5, 35]], np.float64)
    inst = PolygonInstance(0, 0.9, 1.0, [sq], 600, (5.0, 5.0, 20.0, 30.0))
    return {rel: FinishedImage(rel, Path(rel), HW, "ok", (inst,)) for rel in ("x.png", "sub/y.png")}


def _eval(gt: Path):
    from annotator.evaluate import evaluate_images

    report = _bounded(lambda: evaluate_images(_ours(), NAMES, gt))
    if not isinstance(report, InputFileError):
        assert report.images_matched >= 1
        assert all(-1.0 <= v <= 1.0 for v in report.segm.values()) and all(-1.0 <= v <= 1.0 for v in report.bbox.values())


@settings(FUZZ, max_examples=40)
@given(st.data())
def test_eval_coco_ground_truth_mutations(tmp_path_factory, data):
    _eval(_write(tmp_path_factory.mktemp("gt") / "gt.json", _json_text(_mutate(COCO_GT, data), data)))


@settings(FUZZ, max_examples=40)
@given(st.data())
def test_eval_yolo_ground_truth_mutations(tmp_path_factory, data):
    gt = tmp_path_factory.mktemp("gty") / "labels"
    _write(gt / "x.txt", _yolo_text(data))
    _write(gt / "sub" / "y.txt", _yolo_text(data))
    _eval(gt)


@FUZZ
@given(st.data())
def test_config_yaml_mutations(tmp_path_factory, data):
    from annotator.config import load_config_file, make_config

    d = tmp_path_factory.mktemp("cfg")
    (d / "images").mkdir()
    doc = _mutate(CONFIG, data)
    text = yaml.safe_dump(doc).replace(DEEP, "[" * 50 + "]" * 50) if not isinstance(doc, str) else doc
    edit = data.draw(st.sampled_from(["none", "none", "anchor", "bomb", "truncate", "tab", "nan"]))
    if edit == "anchor":
        text = "base: &b {conf: 0.5}\nconf: *b\n" + text
    elif edit == "bomb":
        text = _billion_laughs("conf")
    elif edit == "truncate":
        text = text[: data.draw(st.integers(0, max(len(text) - 1, 0)))]
    elif edit == "tab":
        text = "\t" + text
    elif edit == "nan":
        text += "simplify_tolerance_px: .nan\n"
    path = _write(d / "job.yaml", text)
    raw = _bounded(lambda: load_config_file(path))
    if isinstance(raw, InputFileError):
        return
    assert isinstance(raw, dict) and all(isinstance(k, str) for k in raw)
    try:
        make_config(**raw)
    except ConfigError as e:  # a setting out of range: one line from the settings model
        assert "\n" not in str(e)


def _billion_laughs(key: str, levels: int = 9) -> str:
    lines = ['l0: &l0 "lol"']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\n{key}: *l{levels - 1}\n"


# --------------------------------------------------------------------------------------- named cases


@pytest.mark.parametrize(
    ("doc", "place"),
    [
        ({"images": {}}, "names, or at least one object"),
        ({"images": {"a.png": [{"class": 10**12, "points": [[1, 1]]}]}}, "class id in 0..99999"),
        ({"images": {"a.png": [{"class": -1, "points": [[1, 1]]}]}}, "class id in 0..99999"),
        ({"images": {"a.png": [{"class": 0, "points": [[1, 10**400]]}]}}, r"expected an integer within \+-2\*\*53"),
        ({"images": {"a.png": [], "./a.png": [{"class": 0, "points": [[1, 1]]}]}}, "the same image as 'a.png'"),
        ({"images": {"a.png": [{"class": 0, "box": [5, 5, 1, 9]}]}}, "x1 < x2"),
    ],
)
def test_points_cases_of_the_issue(tmp_path, doc, place):
    from annotator.prompt_points import load_points_file

    path = _write(tmp_path / "p.json", json.dumps(doc))
    with pytest.raises(InputFileError, match=place):
        with _within(TIME_BOUND_S):
            load_points_file(path)
    _write(path, '{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InputFileError, match="nested at most 32 deep, found 100001 levels"):
        load_points_file(path)


@pytest.mark.parametrize(
    ("edit", "place"),
    [
        (lambda d: d["annotations"].append({"image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]}), r"annotations\[3\].image_id"),
        (lambda d: d["annotations"].append({"image_id": 1, "category_id": 9, "bbox": [1, 1, 2, 2]}), r"annotations\[3\].category_id"),
        (lambda d: d["categories"][0].pop("name"), r"categories\[0\].name: expected a non-empty name, found nothing"),
        (lambda d: d.update(annotations=None), "annotations: expected a list, found null"),
        (lambda d: d["images"].append({"id": 1, "file_name": "z.png"}), r"images\[2\].id: expected unique image ids"),
        (lambda d: d["images"].append({"id": 3, "file_name": "./x.png"}), r"images\[2\].file_name: expected each image once"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, -5, 3]), "w > 0 and h > 0"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, float("nan"), 3]), "finite number"),
        (lambda d: d["annotations"][0].update(bbox=[50, 1, 60, 3]), "inside the 64x48 image"),
    ],
)
def test_coco_prompt_cases_of_the_issue(tmp_path, edit, place):
    from annotator.prompts import LabelBoxSource

    doc = copy.deepcopy(COCO_PROMPTS)
    edit(doc)
    path = _write(tmp_path / "boxes.json", json.dumps(doc, allow_nan=True))
    with pytest.raises(InputFileError, match=place):
        LabelBoxSource(path, tmp_path)
    _write(path, json.dumps([COCO_PROMPTS]))
    with pytest.raises(InputFileError, match="top level: expected an object"):
        LabelBoxSource(path, tmp_path)


def test_yolo_rows_out_of_range_are_refused_not_clipped_to_ones(tmp_path):
    from annotator.prompts import LabelBoxSource

    (tmp_path / "data.yaml").write_text("names: [a, b]\n")
    for row, expected in [
        ("0 1.5 1.5 2.5 1.5 2.5 2.5", r"line 1: expected polygon coordinates normalised to \[0, 1\]"),
        ("-1 0.5 0.5 0.2 0.2", r"line 1: expected a class id in 0..99999, found -1"),
        ("2 0.5 0.5 0.2 0.2", r"line 1: expected a class id in \[0, 1\], found 2"),
        ("0 0.5 0.5 -0.2 0.2", "positive width and height"),
        ("0 nan 0.5 0.2 0.2", "finite numbers"),
        ("0 a b c d", "numbers after the class id"),
    ]:
        _write(tmp_path / "labels" / "x.txt", row + "\n")
        with pytest.raises(InputFileError, match=expected):
            LabelBoxSource(tmp_path / "labels", tmp_path, check_all=True)
    _write(tmp_path / "labels" / "classes.txt", "a\nb\n")  # labelImg's names file: not a label file
    _write(tmp_path / "labels" / "x.txt", "0 0.5 0.5 1.005 0.2\n")  # within the 1% tolerance: clipped
    src = LabelBoxSource(tmp_path / "labels", tmp_path, check_all=True)
    assert src.for_image("x.png", HW).boxes.xyxy_px.tolist() == [[0.0, pytest.approx(19.2), 64.0, pytest.approx(28.8)]]


@pytest.mark.parametrize(
    ("edit", "place"),
    [
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), r"annotations\[0\].segmentation\[0\]: expected a polygon of >= 3 points"),
        (lambda d: d["annotations"][0].update(segmentation="abc"), r"annotations\[0\].segmentation: expected a list of polygons"),
        (lambda d: d["annotations"][0].pop("image_id"), r"annotations\[0\].image_id: expected an integer id, found nothing"),
        (lambda d: d["annotations"][1]["segmentation"].update(counts=[1, 2]), "run lengths adding up to 48 x 64"),
        (lambda d: d["annotations"][1]["segmentation"].update(size=[10, 10], counts=[100]), r"size: expected the image's size \[48, 64\]"),
        (lambda d: d.pop("images"), "images: expected a list, found nothing"),
        (lambda d: d.update(images=[{"id": 1, "file_name": "other.png"}], annotations=[]), "at least one image named as"),
    ],
)
def test_eval_ground_truth_cases_of_the_issue(tmp_path, edit, place):
    from annotator.evaluate import evaluate_images

    doc = copy.deepcopy(COCO_GT)
    edit(doc)
    with pytest.raises(InputFileError, match=place):
        evaluate_images(_ours(), NAMES, _write(tmp_path / "gt.json", json.dumps(doc)))


def test_special_files_are_refused_unopened_in_every_reader(tmp_path):
    """A FIFO where a file is read: each reader refuses it at once (opening it would block for ever)."""
    from annotator.config import load_config_file
    from annotator.evaluate import evaluate_images
    from annotator.prompt_points import load_points_file
    from annotator.prompts import LabelBoxSource

    os.mkfifo(tmp_path / "fifo.json")
    os.mkfifo(tmp_path / "job.yaml")
    (tmp_path / "labels" / "sub").mkdir(parents=True)
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    os.mkfifo(tmp_path / "labels" / "sub" / "b.txt")
    with _within(TIME_BOUND_S):
        for call in (
            lambda: load_points_file(tmp_path / "fifo.json"),
            lambda: load_config_file(tmp_path / "job.yaml"),
            lambda: LabelBoxSource(tmp_path / "labels", tmp_path, check_all=True),
            lambda: evaluate_images(_ours(), NAMES, tmp_path / "labels"),
        ):
            with pytest.raises(InputFileError, match="expected a regular file, found a named pipe"):
                call()
        (tmp_path / "data.yaml").write_text("names: [a]\n")
        src = LabelBoxSource(tmp_path / "labels", tmp_path)  # names known: label files read per image
        with pytest.raises(InputFileError, match="b.txt: expected a regular file, found a named pipe"):
            src.for_image("sub/b.png", HW)


def test_size_limits_and_one_parse_per_file(tmp_path, monkeypatch):
    """A file above its kind's size limit is refused from its stat (not read); an unchanged file is parsed once
    for the run's early check and the stage that reads it again, an edited one again."""
    import annotator.validation.points as points_mod
    from annotator.prompt_points import load_points_file

    path = _write(tmp_path / "p.json", json.dumps(POINTS))
    first = load_points_file(path)
    assert load_points_file(path)[1] is first[1]  # cached by the file's identity
    _write(path, json.dumps({**POINTS, "names": ["a", "b", "c"]}))
    os.utime(path, ns=(1, 1))
    assert load_points_file(path)[0] == {0: "a", 1: "b", 2: "c"}
    monkeypatch.setattr(points_mod, "MAX_POINTS_BYTES", 100)
    _write(path, json.dumps(POINTS) + " " * 200)
    with pytest.raises(InputFileError, match=r"expected a file of at most 100 bytes, found \d+ bytes"):
        load_points_file(path)


def test_yaml_alias_bomb_and_anchors_are_refused_before_expansion(tmp_path):
    from annotator.config import load_config_file

    path = _write(tmp_path / "job.yaml", _billion_laughs("conf"))
    with _within(TIME_BOUND_S):
        with pytest.raises(InputFileError, match="expected plain YAML without anchors or aliases, found anchor &l0"):
            load_config_file(path)


# --------------------------------------------------------------------------------------- real CLI


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "annotator", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)  # fmt: skip


def _assert_refused(proc: subprocess.CompletedProcess, file: Path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and file.name in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def _tree(root: Path) -> dict[str, tuple]:
    """Every file's size and mtime, leaving out SQLite's transient -wal/-shm files of an opened ledger and the
    run lock (``eval`` holds it while it reads the ledger, so its holder record is rewritten)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm", "-journal"))
            and p.relative_to(root).as_posix() != ".annotator/lock"}  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from PIL import Image

    d = tmp_path_factory.mktemp("cli") / "images"
    (d / "sub").mkdir(parents=True)
    for rel in ("x.png", "sub/y.png"):
        Image.fromarray(np.full((*HW, 3), 120, np.uint8)).save(d / rel)
    return d


def _cli_cases(images: Path, tmp: Path, sam: Path) -> list[tuple[list[str], Path]]:
    """One hostile file per reader of ``annotate``: ``(argv, the file the error must name)``."""
    out = tmp / "out"
    base = ["annotate", str(images), "--output-dir", str(out), "--sam-model", str(sam), "--device", "cpu", "--quiet"]
    pts = _write(tmp / "clicks.json", json.dumps({"images": {"x.png": [{"class": 10**12, "points": [[1, 1]]}]}}))
    deep = _write(tmp / "deep.json", '{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    coco = copy.deepcopy(COCO_PROMPTS)
    coco["images"].append({"id": 1, "file_name": "z.png"})
    boxes = _write(tmp / "boxes.json", json.dumps(coco))
    labels = tmp / "labels"
    (labels / "sub").mkdir(parents=True, exist_ok=True)
    _write(labels / "x.txt", "0 0.5 0.5 0.2 0.2\n")
    os.mkfifo(labels / "sub" / "y.txt")
    bomb = _write(tmp / "job.yaml", _billion_laughs("conf"))
    return [
        (base + ["--prompts", "points", "--prompt-points", str(pts)], pts),
        (base + ["--prompts", "points", "--prompt-points", str(deep)], deep),
        (base + ["--prompts", "boxes", "--prompt-labels", str(boxes), "--format", "both"], boxes),
        (base + ["--prompts", "boxes", "--prompt-labels", str(labels)], labels / "sub" / "y.txt"),
        (["annotate", "--config", str(bomb)] + base[1:], bomb),
    ]


def test_cli_annotate_refuses_each_hostile_prompt_file_in_one_line_writing_nothing(images, tmp_path, sam2_t_ckpt):
    """The hangs and crashes of the issue, through the real CLI: each ends in seconds with exit 2, one line
    naming the file, and no output folder (validation runs before any model loads or anything is written)."""
    before = _tree(images)
    for argv, named in _cli_cases(images, tmp_path, sam2_t_ckpt):
        t0 = time.perf_counter()
        proc = _cli(*argv, timeout=120)
        _assert_refused(proc, named)
        assert not (tmp_path / "out").exists(), argv
        assert time.perf_counter() - t0 < 120
    assert _tree(images) == before


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_cli_annotate_with_generated_malformed_points_files(images, tmp_path_factory, sam2_t_ckpt, data):
    d = tmp_path_factory.mktemp("clip")
    doc = {"images": {"x.png": [{"class": data.draw(st.sampled_from([-1, 10**12, "zz", None, 1.5])),
                                 "points": [[data.draw(st.sampled_from([1, -5, 1e308])), 2]]}]}}  # fmt: skip
    path = _write(d / "pts.json", json.dumps(doc))
    proc = _cli("annotate", str(images), "--output-dir", str(d / "out"), "--sam-model", str(sam2_t_ckpt), "--device",
                "cpu", "--quiet", "--prompts", "points", "--prompt-points", str(path))  # fmt: skip
    _assert_refused(proc, path)
    assert not (d / "out").exists()


@pytest.fixture(scope="module")
def finished_run(images, tmp_path_factory, sam2_t_ckpt) -> Path:
    """A real finished run (``prompts: boxes`` from a YOLO tree, random SAM 2 weights) to evaluate against."""
    from annotator.api import run
    from annotator.config import make_config

    labels = images.parent / "prompt_labels"
    _write(labels / "x.txt", "0 0.5 0.5 0.3 0.4\n")
    _write(images.parent / "data.yaml", "names: [a, b]\n")
    out = tmp_path_factory.mktemp("run") / "out"
    run(make_config(data=images, prompts="boxes", prompt_labels=labels, sam_model=str(sam2_t_ckpt), device="cpu",
                    output_dir=out, sam_min_score=0.0))  # fmt: skip
    return out


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_cli_eval_with_generated_malformed_ground_truth(finished_run, tmp_path_factory, data):
    d = tmp_path_factory.mktemp("clieval")
    kind = data.draw(st.sampled_from(["coco", "yolo", "fifo"]))
    if kind == "coco":
        doc = copy.deepcopy(COCO_GT)
        doc["annotations"][0]["segmentation"] = data.draw(st.sampled_from([[[1, 2, 3, 4]], "abc", None, [[math.inf] * 6]]))
        gt = named = _write(d / "gt.json", json.dumps(doc, allow_nan=True))
    elif kind == "yolo":
        gt = d / "gt"
        named = _write(gt / "x.txt", data.draw(st.sampled_from(["0 a b c d\n", "0 0.1 0.2\n", "-1 0.5 0.5 0.1 0.1\n"])))
    else:
        gt = d / "gt"
        gt.mkdir()
        os.mkfifo(gt / "x.txt")
        named = gt / "x.txt"
    before = _tree(finished_run)
    proc = _cli("eval", str(finished_run), "--gt", str(gt), timeout=120)
    _assert_refused(proc, named)
    assert _tree(finished_run) == before and not (finished_run / "eval.json").exists()
