"""Label Studio export: the task JSON shape (fast), and an import into a real Label Studio server (slow).

The slow test runs a real annotation (synthetic shapes, the trained shapes detector, a random-weight SAM 2-tiny),
exports it, starts ``label-studio`` from its own virtual environment (its pinned Django & co. would clash with
ours), creates a project with our labeling config, imports our tasks.json through the HTTP API with Label
Studio's strict prediction validation switched on, and reads everything back.

The Label Studio venv is ``$ANNOTATOR_LABEL_STUDIO_VENV`` or ``~/.cache/annotator-tests/labelstudio-venv``,
created on first use with ``python -m venv`` + ``pip install label-studio==<LABEL_STUDIO_VERSION>`` (about
1.5 minutes and 1 GB from the package registry) and reused afterwards. An install that fails fails the test
with pip's output: it is never skipped.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from annotator.finished import FinishedImage
from annotator.records import PolygonInstance
from annotator.review.labelstudio import export_labelstudio, image_url, labeling_config, task_for

LABEL_STUDIO_VERSION = "1.23.2"
LS_VENV = Path(
    os.environ.get("ANNOTATOR_LABEL_STUDIO_VENV") or Path.home() / ".cache" / "annotator-tests" / "labelstudio-venv"
)
TOKEN = "annotator-test-token-0123456789"  # a legacy API token, set by `label-studio start --user-token`
INSTALL_TIMEOUT_S = 1200
START_TIMEOUT_S = 300
HTTP_TIMEOUT_S = 60


# ---------------------------------------------------------------------------------------------- fast: shape


def _inst(class_id, det, sam, *parts):
    polys = [np.asarray(p, np.float64) for p in parts]
    return PolygonInstance(class_id, det, sam, polys, area_px=10, bbox_xywh_px=(0.0, 0.0, 1.0, 1.0))


def _fake_run(tmp_path, images):
    return SimpleNamespace(
        names={0: "cat", 1: 'dog & "pup"'},
        model_version="det.pt@aaaaaaaaaaaa+sam.pt@bbbbbbbbbbbb",
        data_root=tmp_path / "my data",
        images=lambda: iter(images),
    )


def test_labeling_config_is_xml_with_one_label_per_class():
    names = {0: "a<b", 1: 'quote "x" & y', 2: "line\nbreak\ttab"}
    root = ET.fromstring(labeling_config(names))
    img = root.find("Image")
    poly = root.find("PolygonLabels")
    assert img.get("name") == "image" and img.get("value") == "$image"
    assert poly.get("name") == "label" and poly.get("toName") == "image"
    assert [lb.get("value") for lb in poly.findall("Label")] == [names[0], names[1], names[2]]


def test_task_percent_points_scores_and_grouping(tmp_path):
    big = [[0, 0], [100, 0], [100, 50], [0, 50]]
    small = [[150, 20], [160, 20], [155, 30]]
    img = FinishedImage("sub/a.jpg", tmp_path / "sub/a.jpg", (50, 200), "ok",
                        (_inst(1, 0.9, 0.5, big, small), _inst(0, 0.8, 1.0, small)))  # fmt: skip
    task = task_for(img, {0: "cat", 1: "dog"}, "v1", "http://h/i/")
    assert task["data"] == {"image": "http://h/i/sub/a.jpg", "rel_path": "sub/a.jpg"}
    (pred,) = task["predictions"]
    assert pred["model_version"] == "v1" and pred["score"] == pytest.approx(0.45) == img.review_score
    res = pred["result"]
    assert [r["id"] for r in res] == ["o0p0", "o0p1", "o1p0"]
    assert [r.get("parentID") for r in res] == [None, "o0p0", None]  # the further part hangs under the largest
    assert [r["value"]["polygonlabels"] for r in res] == [["dog"], ["dog"], ["cat"]]
    assert [r["score"] for r in res] == pytest.approx([0.45, 0.45, 0.8])
    assert res[0]["value"]["points"] == [[0.0, 0.0], [50.0, 0.0], [50.0, 100.0], [0.0, 100.0]]  # x/W, y/H in %
    np.testing.assert_allclose(res[1]["value"]["points"], [[75.0, 40.0], [80.0, 40.0], [77.5, 60.0]], atol=1e-12)
    for r in res:
        assert (r["from_name"], r["to_name"], r["type"]) == ("label", "image", "polygonlabels")
        assert (r["original_width"], r["original_height"], r["image_rotation"]) == (200, 50, 0)
        assert r["value"]["closed"] is True
    assert res[1]["meta"] | {"text": None} == {"text": None, "object": 0, "part": 1, "parts": 2, "class_id": 1,
                                                "det_conf": 0.9, "sam_score": 0.5}  # fmt: skip
    empty = task_for(FinishedImage("b.jpg", tmp_path / "b.jpg", (5, 5), "empty", ()), {}, "v1", "/x/")
    assert empty["predictions"] == [{"model_version": "v1", "score": 1.0, "result": []}]


def test_image_url_conventions(tmp_path):
    assert image_url("sub/a b#?.jpg", "http://h/img/") == "http://h/img/sub/a%20b%23%3F.jpg"
    assert image_url("sub/a b.jpg", "s3://bucket/pre/") == "s3://bucket/pre/sub/a b.jpg"  # keys verbatim
    assert image_url("sub/a b.jpg", "gs://b/") == "gs://b/sub/a b.jpg"
    run = _fake_run(tmp_path, [FinishedImage("sub/ü 1.jpg", tmp_path / "x", (4, 4), "empty", ())])
    export_labelstudio(run, tmp_path / "ls")
    (task,) = json.loads((tmp_path / "ls" / "tasks.json").read_text(encoding="utf-8"))
    want = "/data/local-files/?d=" + urllib.parse.quote(f"{(tmp_path / 'my data').as_posix().lstrip('/')}/sub/ü 1.jpg")
    assert task["data"]["image"] == want
    assert urllib.parse.unquote(urllib.parse.parse_qs(urllib.parse.urlsplit(want).query)["d"][0]) == (
        (tmp_path / "my data" / "sub" / "ü 1.jpg").as_posix().lstrip("/")
    )


def test_export_orders_by_review_priority_and_writes_atomically(tmp_path):
    sq = [[0, 0], [2, 0], [2, 2]]
    images = [
        FinishedImage("c.jpg", tmp_path / "c.jpg", (4, 4), "ok", (_inst(0, 0.5, 0.5, sq),)),  # 0.25
        FinishedImage("a.jpg", tmp_path / "a.jpg", (4, 4), "empty", ()),  # 1.0
        FinishedImage("b.jpg", tmp_path / "b.jpg", (4, 4), "ok", (_inst(1, 0.5, 0.5, sq), _inst(0, 0.9, 0.9, sq))),
        FinishedImage("d.jpg", tmp_path / "d.jpg", (4, 4), "ok", (_inst(0, 0.9, 0.2, sq),)),  # 0.18
    ]
    run = _fake_run(tmp_path, images)
    paths = export_labelstudio(run, tmp_path / "out" / "ls", image_root="http://h/")
    assert paths == [tmp_path / "out" / "ls" / "tasks.json", tmp_path / "out" / "ls" / "labeling_config.xml"]
    tasks = json.loads(paths[0].read_text(encoding="utf-8"))
    assert [t["data"]["rel_path"] for t in tasks] == ["d.jpg", "b.jpg", "c.jpg", "a.jpg"]  # b/c tie: by name
    assert ET.fromstring(paths[1].read_text(encoding="utf-8")).find("PolygonLabels") is not None
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["labeling_config.xml", "tasks.json"]  # no temp
    before = paths[0].stat().st_mtime_ns
    export_labelstudio(run, tmp_path / "out" / "ls", image_root="http://h/")
    assert paths[0].stat().st_mtime_ns == before  # same bytes: untouched


# ------------------------------------------------------------------------------- slow: a real Label Studio


def _ls_venv() -> Path:
    """The Label Studio venv's ``label-studio``; the venv is made (under a lock: parallel runs share it) when it is
    not complete yet."""
    LS_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(LS_VENV.parent / f".{LS_VENV.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _make_ls_venv()


def _make_ls_venv() -> Path:
    marker = LS_VENV / ".annotator-installed"
    exe = LS_VENV / "bin" / "label-studio"
    if marker.is_file() and marker.read_text().strip() == LABEL_STUDIO_VERSION and exe.is_file():
        return exe
    if LS_VENV.exists():
        shutil.rmtree(LS_VENV)  # a half-made venv (install killed or failed): start again
    steps = [
        [sys.executable, "-m", "venv", str(LS_VENV)],
        [str(LS_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         f"label-studio=={LABEL_STUDIO_VERSION}"],
    ]  # fmt: skip
    for cmd in steps:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"installing Label Studio timed out after {INSTALL_TIMEOUT_S}s: {' '.join(cmd)}")
        if p.returncode != 0:
            errors = "\n".join(ln for ln in (p.stdout + p.stderr).splitlines() if "is ignored: it is neither" not in ln)
            pytest.fail(f"installing Label Studio failed (rc {p.returncode}): {' '.join(cmd)}\n{errors[-4000:]}")
    marker.write_text(LABEL_STUDIO_VERSION + "\n")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _LabelStudio:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url, self.proc, self.log = url, proc, log

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until ``/health`` answers 200; fails with the server's log when it exits or the time is up."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-4000:]
                pytest.fail(f"label-studio exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-4000:]
                pytest.fail(f"label-studio did not answer in {timeout_s}s:\n{tail}")
            time.sleep(2)

    def call(self, method: str, path: str, body=None, *, raw: bool = False, expect: int | None = None):
        """One API call with the test user's token; the decoded JSON (``raw``: the bytes). ``expect``: the HTTP
        error status the call must fail with (then the error body is returned)."""
        data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
                payload = r.read()
        except urllib.error.HTTPError as e:
            if e.code == expect:
                return e.read().decode("utf-8", "replace")
            pytest.fail(f"Label Studio {method} {path} -> {e.code}: {e.read()[:3000]!r}")
        assert expect is None, f"Label Studio {method} {path} should have failed with {expect}"
        return payload if raw else json.loads(payload or b"null")


@pytest.fixture()
def label_studio(tmp_path, request):
    """A Label Studio server on a free port with a fresh SQLite database, started but not waited for (it boots in
    about a minute: call ``wait_ready()``); killed with its process group at teardown."""
    exe = _ls_venv()
    port = _free_port()
    data_dir = tmp_path / "ls-data"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),  # nothing under ~/.local/share
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="/",  # what export_labelstudio's default image URLs assume
        LATEST_VERSION_CHECK="false",  # no call to the package index at start
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        # Label Studio's own check of imported predictions against the labeling config: refuse, not just log
        fflag_feat_utc_210_prediction_validation_15082025="true",
    )
    env["PATH"] = f"{exe.parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir), "--username", "reviewer@example.com", "--password", "annotator-test-pw",
           "--user-token", TOKEN, "--enable-legacy-api-token", "--log-level", "WARNING"]  # fmt: skip
    log = tmp_path / "label-studio.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    def stop():
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue

    request.addfinalizer(stop)
    server = _LabelStudio(f"http://127.0.0.1:{port}", proc, log)
    return server


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shapes_detector, sam2_t_ckpt):
    """A real annotation of a few synthetic images (one of them empty), read back as a FinishedRun."""
    from annotator.api import run
    from annotator.config import make_config
    from annotator.finished import open_finished
    from annotator.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path_factory.mktemp("ls") / "shapes", 4, seed=3, n_objects=(2, 3),
                                   empty_fraction=0.25, labels=None)  # fmt: skip
    out = root / "out"
    s = run(make_config(data=root / "images", det_model=str(shapes_detector), sam_model=str(sam2_t_ckpt),
                        device="cpu", output_dir=out, sam_min_score=0.0))  # fmt: skip
    assert s.instances > 0 and s.empty >= 1
    return open_finished(out)


@pytest.mark.slow
def test_label_studio_imports_tasks_as_predictions(label_studio, finished_run, tmp_path):
    # label_studio first: the server boots while the annotation runs
    run = finished_run
    images = {img.rel_path: img for img in run.images()}
    assert any(len(i.polygons_xy_px) > 1 for img in images.values() for i in img.instances), "want a multi-part mask"
    tasks_path, config_path = export_labelstudio(run, tmp_path / "export")
    ours = json.loads(tasks_path.read_text(encoding="utf-8"))

    ls = label_studio
    ls.wait_ready()
    project = ls.call("POST", "/api/projects", {"title": "annotator review", "label_config": config_path.read_text()})
    pid = project["id"]
    # Label Studio's prediction validation is on: a label outside the config is refused, so ours passed it.
    bad = json.loads(json.dumps(next(t for t in ours if t["predictions"][0]["result"])))
    bad["predictions"][0]["result"][0]["value"]["polygonlabels"] = ["no-such-class"]
    assert "no-such-class" in ls.call("POST", f"/api/projects/{pid}/import?commit_to_project=true",
                                      json.dumps([bad]).encode(), expect=400)  # fmt: skip
    imported = ls.call("POST", f"/api/projects/{pid}/import?commit_to_project=true&return_task_ids=true",
                       tasks_path.read_bytes())  # fmt: skip
    assert imported["task_count"] == len(images) and imported["annotation_count"] == 0
    assert imported["prediction_count"] == len(images)
    # Serve the images: a Local files storage over the data folder (not synced: the tasks are already there).
    ls.call("POST", "/api/storages/localfiles", {"project": pid, "path": str(run.data_root), "title": "images"})

    # Read back in the Data Manager's "prediction score, ascending" order: the review queue.
    query = urllib.parse.quote(json.dumps({"ordering": ["tasks:predictions_score"]}))
    got = ls.call("GET", f"/api/tasks?project={pid}&fields=all&page_size=1000&query={query}")["tasks"]
    assert [t["data"]["rel_path"] for t in got] == [t["data"]["rel_path"] for t in ours]
    assert [t["data"]["rel_path"] for t in got] == sorted(images, key=lambda r: (images[r].review_score, r))

    for task in got:
        img = images[task["data"]["rel_path"]]
        h, w = img.image_hw
        assert task["annotations"] == [] and task["total_annotations"] == 0  # predictions, not annotations
        (pred,) = task["predictions"]
        assert pred["model_version"] == run.model_version
        assert pred["score"] == pytest.approx(img.review_score, abs=1e-12)
        parts = [(k, j, inst, xy) for k, inst in enumerate(img.instances) for j, xy in enumerate(inst.polygons_xy_px)]
        assert len(pred["result"]) == len(parts)
        for region, (k, j, inst, xy) in zip(pred["result"], parts):
            assert region["id"] == f"o{k}p{j}" and region.get("parentID") == (f"o{k}p0" if j else None)
            assert (region["type"], region["from_name"], region["to_name"]) == ("polygonlabels", "label", "image")
            assert (region["original_width"], region["original_height"], region["image_rotation"]) == (w, h, 0)
            assert region["value"]["polygonlabels"] == [run.names[inst.class_id]]
            assert region["score"] == pytest.approx(inst.det_conf * inst.sam_score, abs=1e-12)
            meta = region["meta"]
            assert (meta["object"], meta["part"], meta["parts"]) == (k, j, len(inst.polygons_xy_px))
            assert (meta["det_conf"], meta["sam_score"]) == pytest.approx((inst.det_conf, inst.sam_score))
            pts = np.asarray(region["value"]["points"], np.float64)
            assert pts.shape == xy.shape
            np.testing.assert_allclose(pts, xy / [w, h] * 100.0, rtol=0, atol=1e-6)
        # the image URL resolves, through Label Studio, to the very file the run labelled
        assert ls.call("GET", task["data"]["image"], raw=True) == img.path.read_bytes()

    # A video frame's task (annotator/video): data.video / frame_index and each region's meta.track_id survive the
    # import; its URL (the frame JPEG's own local-files URL) resolves once a storage covers the frames folder.
    from dataclasses import replace

    from annotator.review.labelstudio import local_files_url

    frame_path = tmp_path / "frames" / "images" / "clips" / "a.avi" / "000003.jpg"
    frame_path.parent.mkdir(parents=True)
    shutil.copyfile(next(iter(images.values())).path, frame_path)
    sq = np.array([[4.0, 4.0], [30.0, 4.0], [30.0, 30.0], [4.0, 30.0]])
    inst = replace(_inst(0, 0.8, 0.9, sq), track_id=7)
    frame = FinishedImage("clips/a.avi/000003.jpg", frame_path, (40, 40), "ok", (inst,), "clips/a.avi", 3)
    ftask = task_for(frame, run.names, run.model_version, "", url=local_files_url(frame_path))
    ls.call("POST", f"/api/projects/{pid}/import?commit_to_project=true", json.dumps([ftask]).encode())
    ls.call("POST", "/api/storages/localfiles", {"project": pid, "path": str(tmp_path / "frames"), "title": "frames"})
    got = ls.call("GET", f"/api/tasks?project={pid}&fields=all&page_size=1000")["tasks"]
    (back,) = [t for t in got if t["data"].get("video")]
    data = back["data"]
    assert (data["video"], data["frame_index"], data["rel_path"]) == ("clips/a.avi", 3, frame.rel_path)
    (region,) = back["predictions"][0]["result"]
    assert region["meta"]["track_id"] == 7 and "track 7" in region["meta"]["text"][0]
    assert ls.call("GET", back["data"]["image"], raw=True) == frame_path.read_bytes()
