"""File names and class names with any characters: labelled (or refused with a reason), never a traceback, and
every output that holds them is well-formed (COCO JSON, CVAT XML, Label Studio config and tasks, the review
page, scores.csv, review_queue.csv). Numeric flags out of range end in one line, exit 2. A still image named
``.mp4`` is a ``decode_error`` video, not a one-frame one.

One real CLI run labels every hostile name at once: ``prompts: boxes`` with polygon rows only (kept as they
are, so SAM encodes nothing) and a ``data.yaml`` of hostile class names.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from annotator.review.labelstudio import labeling_config
from annotator.review.xml_text import xml_attr, xml_legal, xml_text
from annotator.sources import LINE_BREAKS, name_problem, printable_name

pytestmark = pytest.mark.slow

#: labelled as they are (a backslash is a POSIX name character; tabs, controls, markup, quotes, Unicode)
LABELLED = ["a\\b.jpg", "ctl\x01\x1f.jpg", "tab\there.jpg", "q<&>\"'.jpg", "ünï 日本.jpg", " lead.jpg",
            "x" * 251 + ".jpg", "y" * 250 + ".jpeg", "esc\x1b[31m.png", "amp&amp;.jpg"]  # fmt: skip
#: refused at scan time with a reason (bytes: not valid UTF-8; a line break; an output name over 255 bytes)
REFUSED = [b"bad\xff\xfe.jpg", b"new\nline.jpg", b"cr\rret.jpg", "ls\u2028sep.jpg".encode(), b"v" * 251 + b".avi"]
CLASS_NAMES = ['a<b>&"c\'', "ctl\x01\x02\x1f", "new\nline", "back\\slash", "ünï 日本", "cr\rx", "]]>--><!--"]


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "annotator", *args], capture_output=True, text=True, timeout=timeout,
                          errors="backslashreplace")  # fmt: skip


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, sam2_t_ckpt) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    img = np.full((48, 64, 3), 128, np.uint8)
    ok, jpg = cv2.imencode(".jpg", img)
    for k, name in enumerate(LABELLED):
        (images / name).write_bytes(jpg.tobytes())
        stem = name.rsplit(".", 1)[0]
        c = k % len(CLASS_NAMES)
        (labels / f"{stem}.txt").write_text(f"{c} 0.1 0.1 0.6 0.1 0.6 0.7 0.1 0.7\n", encoding="utf-8")
    for name in REFUSED:
        with open(os.path.join(os.fsencode(images), name), "wb") as f:
            f.write(jpg.tobytes())
    (root / "data.yaml").write_text(yaml.safe_dump({"names": CLASS_NAMES}), encoding="utf-8")
    out = root / "out"
    p = _cli("annotate", str(images), "--prompts", "boxes", "--prompt-labels", str(labels), "--sam-model",
             str(sam2_t_ckpt), "--device", "cpu", "--output-dir", str(out), "--format", "both", "--save-conf",
             "--export", "labelstudio", "cvat", "page", "--torch-threads", "1")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    return out


def test_every_utf8_name_is_labelled_and_the_others_refused_with_a_reason(hostile):
    report = json.loads((hostile / "run_report.json").read_text(encoding="utf-8"))["summary"]
    assert report["images_seen"] == len(LABELLED) and report["failed"] == 0 and report["annotated"] == len(LABELLED)
    for name in LABELLED:
        label = hostile / "labels" / (name.rsplit(".", 1)[0] + ".txt")
        assert label.read_text(encoding="utf-8").split()[0].isdigit(), name
    refused = {r["path"]: r["reason"] for r in report["refused"]}
    assert len(refused) == len(REFUSED)
    for raw in REFUSED:
        key = printable_name(os.fsdecode(raw))
        assert "\n" not in key and "rename it" in refused[key], key
    assert "not valid UTF-8" in refused["bad\\xff\\xfe.jpg"] and "line break" in refused["new\\nline.jpg"]
    assert "over the 255-byte limit" in refused["v" * 251 + ".avi"]


def test_outputs_are_well_formed_and_hold_the_names(hostile):
    coco = json.loads((hostile / "annotations.json").read_text(encoding="utf-8"))
    assert sorted(im["file_name"] for im in coco["images"]) == sorted(LABELLED)
    assert [c["name"] for c in coco["categories"]] == CLASS_NAMES

    cvat = ET.parse(hostile / "review" / "cvat" / "annotations.xml").getroot()  # raises when ill-formed
    assert sorted(im.get("name") for im in cvat.iter("image")) == sorted(xml_legal(n) for n in LABELLED)
    assert [lb.findtext("name") for lb in cvat.iter("label")] == [xml_legal(n) for n in CLASS_NAMES]
    assert {p.get("label") for p in cvat.iter("polygon")} <= {xml_legal(n) for n in CLASS_NAMES}

    ls = hostile / "review" / "labelstudio"
    config = ET.parse(ls / "labeling_config.xml").getroot()
    values = [lb.get("value") for lb in config.iter("Label")]
    assert values == [xml_legal(n) for n in CLASS_NAMES]
    tasks = json.loads((ls / "tasks.json").read_text(encoding="utf-8"))
    used = {v for t in tasks for p in t["predictions"] for r in p["result"] for v in r["value"]["polygonlabels"]}
    assert used and used <= set(values)  # every prediction's label exists in the config

    page = hostile / "review" / "page"
    _Strict().feed((page / "index.html").read_text(encoding="utf-8"))
    blobs = "".join(p.read_text(encoding="ascii") for p in sorted((page / "data").glob("page-*.js")))
    for name in LABELLED:
        assert json.dumps(name, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e").replace(
            "&", "\\u0026") in blobs, name  # fmt: skip

    with open(hostile / "scores.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["image"] for r in rows}) == sorted(LABELLED)
    assert {r["class_name"] for r in rows} <= set(CLASS_NAMES)
    with open(hostile / "review" / "cvat" / "review_queue.csv", encoding="utf-8", newline="") as f:
        assert sorted(r["rel_path"] for r in csv.DictReader(f)) == sorted(LABELLED)


class _Strict(HTMLParser):
    """Fails on text outside the document's tags holding a control character (what a name could smuggle in)."""

    def handle_data(self, data: str) -> None:
        assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", data), repr(data[:80])


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["review", "{out}", "--per-page", "0"], "--per-page"),
        (["review", "{out}", "--per-page", "-3"], "--per-page"),
        (["annotate", "{data}", "--max-failures", "-1"], "--max-failures"),
        (["annotate", "{data}", "--conf", "nan"], "--conf"),
        (["annotate", "{data}", "--min-area-px", "inf"], "--min-area-px"),
        (["annotate", "{data}", "--sam-min-score", "1e999"], "--sam-min-score"),
    ],
)
def test_numeric_flags_out_of_range_are_one_line_exit_2(tmp_path, args, flag):
    (tmp_path / "d").mkdir()
    p = _cli(*[a.format(out=tmp_path, data=tmp_path / "d") for a in args], timeout=120)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and flag in p.stderr and "Traceback" not in p.stderr


def test_still_image_named_mp4_is_a_decode_error(tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    data = tmp_path / "d"
    data.mkdir()
    ok, png = cv2.imencode(".png", np.full((48, 64, 3), 90, np.uint8))
    (data / "still.mp4").write_bytes(png.tobytes())
    (data / "x.png").write_bytes(png.tobytes())
    p = _cli("annotate", str(data), "--det-model", str(random_yolo_ckpt), "--sam-model", str(sam2_t_ckpt),
             "--device", "cpu", "--output-dir", str(tmp_path / "o"), "--torch-threads", "1")  # fmt: skip
    assert p.returncode == 1, p.stderr  # a video failed
    [video] = json.loads((tmp_path / "o" / "run_report.json").read_text())["summary"]["videos"]
    assert video["status"] == "decode_error" and "PNG image, not a video" in video["reason"]
    assert video["frames_written"] == 0 and not (tmp_path / "o" / "video_frames").exists()


_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from("\x00\x01\x1f\r\n\t<>&\"'\\\ufffe\uffff"), max_size=30)


@settings(max_examples=60, deadline=None)
@given(_TEXT)
def test_any_text_is_well_formed_xml(s):
    root = ET.fromstring(f"<r a={xml_attr(s)}>{xml_text(s)}</r>")
    assert root.get("a") == xml_legal(s) and (root.text or "") == xml_legal(s)
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]", xml_legal(s))


@settings(max_examples=40, deadline=None)
@given(st.lists(_TEXT, min_size=1, max_size=4))
def test_labelstudio_config_of_any_names_parses(names):
    config = ET.fromstring(labeling_config(dict(enumerate(names))))
    assert [lb.get("value") for lb in config.iter("Label")] == [xml_legal(n) for n in names]


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\x00" not in b))
def test_any_byte_name_is_named_on_one_printable_line(raw):
    name = os.fsdecode(raw)
    shown = printable_name(name)
    shown.encode("utf-8")  # storable
    assert shown.isprintable()
    if name_problem(name) is None:
        name.encode("utf-8")
        assert not any(c in LINE_BREAKS for c in name)


def test_data_folder_whose_path_is_not_utf8_is_one_line_exit_2(tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    images = os.path.join(os.fsencode(tmp_path), b"root\xff", b"images")
    os.makedirs(images)
    ok, jpg = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))
    with open(os.path.join(images, b"a.jpg"), "wb") as f:
        f.write(jpg.tobytes())
    p = subprocess.run([sys.executable, "-m", "annotator", "annotate", images, "--det-model", str(random_yolo_ckpt),
                        "--sam-model", str(sam2_t_ckpt), "--device", "cpu"], capture_output=True, timeout=120)  # fmt: skip
    err = p.stderr.decode("utf-8", "backslashreplace")
    assert p.returncode == 2 and len(err.strip().splitlines()) == 1 and "not valid UTF-8" in err, err
    assert not os.path.exists(os.path.join(os.path.dirname(images), b"labels"))


_NAME_BYTES = st.binary(min_size=1, max_size=60).filter(lambda b: b"/" not in b and b"\x00" not in b and b != b"zz_ok")


@settings(max_examples=40, deadline=None)
@given(stem=_NAME_BYTES, suffix=st.sampled_from([b".jpg", b".jpeg", b".png", b".mp4"]), pad=st.sampled_from([0, 200]))
def test_any_byte_name_is_scanned_as_an_item_or_refused_with_a_reason(tmp_path_factory, stem, suffix, pad):
    """The scan's contract for any file name (the CLI runs above cover a sample end to end): an item whose label
    file can be created and whose name every output format holds, or a refusal with a printable reason."""
    from annotator.formats.yolo import yolo_label_relpath
    from annotator.sources import scan_sources

    root = tmp_path_factory.mktemp("n")
    name = (b"p" * pad + stem)[:255 - len(suffix)] + suffix
    with open(os.path.join(os.fsencode(root), name), "wb") as f:
        f.write(b"x")
    (root / "zz_ok.jpg").write_bytes(b"x")  # a neighbour, so that the scan never ends in "no images found"
    scan = scan_sources(root)  # files of one byte: decoding is not the point here
    found = [it for it in (*scan.items, *scan.videos) if it.rel_path != "zz_ok.jpg"]
    assert len(found) + len(scan.refused) == 1
    if found:
        rel = found[0].rel_path
        json.dumps(rel, ensure_ascii=False).encode("utf-8")
        ET.fromstring(f"<i name={xml_attr(rel)}/>")
        label = root / "labels" / yolo_label_relpath(rel)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("0 0 0 1 0 1 1\n", encoding="utf-8")  # the file system takes the label's name
    else:
        shown, reason = scan.refused[0]
        assert shown.isprintable() and "rename it" in reason
