"""The static review page, checked in a real headless browser (Chromium): a real annotation run (trained shapes
detector + random SAM 2-tiny) on images in sub-folders, the page opened from disk (``file://``), the rendered
DOM read back with ``--dump-dom``: cards per page, polygons per instance part, class names, review order,
URL-driven pages and filters, and a screenshot.

Chromium: ``apt-get install -y chromium`` (Debian). Without it the browser tests are skipped (failed under CI).
``ANNOTATOR_UPDATE_SCREENSHOT=1`` copies the screenshot to ``docs/review_page.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from annotator.records import PolygonInstance
from annotator.review.page import class_color, write_review_page

REPO = Path(__file__).resolve().parents[1]
PER_PAGE = 3


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return exe


def browse(url: str, *args: str, timeout: float = 90) -> str:
    """Run headless Chromium on ``url`` in its own process group (killed whole on timeout); its stdout."""
    with tempfile.TemporaryDirectory(prefix="annotator-chromium-") as profile:
        cmd = [
            _chromium(), "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
            "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
            "--virtual-time-budget=15000", *args, url,
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"chromium did not finish within {timeout}s: {' '.join(cmd)}")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers left behind by the browser, if any
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


class Cards(HTMLParser):
    """The rendered cards: rel path, review score, polygons (class, point count) and the card's text."""

    def __init__(self, html: str):
        super().__init__()
        self.cards: list[dict] = []
        self.status = ""
        self._depth = 0
        self._in_status = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("class") == "card":
            self.cards.append({"rel": a["data-rel"], "score": float(a["data-score"]), "polygons": [], "text": ""})
            self._depth = 1
        elif self._depth and tag == "div":
            self._depth += 1
        if self._depth and tag == "polygon":
            self.cards[-1]["polygons"].append((int(a["data-class"]), len(a["points"].split())))
        self._in_status = a.get("id") == "status"

    def handle_endtag(self, tag):
        if self._depth and tag == "div":
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.cards[-1]["text"] += data
        if self._in_status:
            self.status += data


# --- a real run -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shapes_detector, sam2_t_ckpt):
    from annotator.api import run
    from annotator.config import make_config
    from annotator.finished import open_finished
    from annotator.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("review") / "shapes"
    write_synthetic_dataset(root, 7, seed=5, subdirs=("", "a", "b c"), empty_fraction=0.15, n_objects=(1, 3))
    out = root / "out"
    cfg = make_config(
        data=root / "images", output_dir=out, det_model=str(shapes_detector), sam_model=str(sam2_t_ckpt),
        device="cpu", sam_min_score=0.0, batch_size=4,
    )  # fmt: skip
    run(cfg)
    return open_finished(out)


@pytest.fixture(scope="module")
def page(finished, tmp_path_factory):
    dest = tmp_path_factory.mktemp("page") / "review"
    index = write_review_page(finished, dest, per_page=PER_PAGE, overlays=True)
    order = sorted(finished.images(), key=lambda i: (round(i.review_score, 4), i.rel_path))  # as the page sorts
    return SimpleNamespace(index=index, dest=dest, images=order)


def _check_card(card, img, names):
    assert card["rel"] == img.rel_path
    assert card["score"] == pytest.approx(img.review_score, abs=1e-4)
    want = sorted((i.class_id, len(p)) for i in img.instances for p in i.polygons_xy_px)
    assert sorted(card["polygons"]) == want  # one <polygon> per part, every vertex
    for inst in img.instances:
        assert names[inst.class_id] in card["text"]
        assert f"{inst.det_conf:.2f} × {inst.sam_score:.2f}" in card["text"]
    if not img.instances:
        assert "no objects" in card["text"]


@pytest.mark.slow
def test_pages_in_browser(page, finished):
    imgs = page.images
    assert len(imgs) == 7 and any(not i.instances for i in imgs) and any(i.instances for i in imgs)
    assert {Path(i.rel_path).parent.as_posix() for i in imgs} == {".", "a", "b c"}
    assert sorted((page.dest / "data").iterdir()) == [page.dest / "data" / f"page-000{i}.js" for i in (1, 2, 3)]
    for n, hash_ in ((1, ""), (2, "#page=2"), (3, "#page=3")):
        url = page.index.as_uri() + hash_
        cards = Cards(browse(url, "--dump-dom")).cards
        want = imgs[(n - 1) * PER_PAGE : n * PER_PAGE]
        assert [c["rel"] for c in cards] == [i.rel_path for i in want], f"page {n}"
        for card, img in zip(cards, want):
            _check_card(card, img, finished.names)
    scores = [i.review_score for i in imgs]
    assert scores == sorted(scores) and scores[-1] == 1.0  # the empty image last
    for img in imgs:  # overlays: the image size, polygons drawn in class colours
        ov = cv2.imread(str(page.dest / "overlays" / (img.rel_path + ".png")))
        assert ov is not None and ov.shape[:2] == img.image_hw


@pytest.mark.slow
def test_filters_from_url(page, finished):
    imgs = page.images[:PER_PAGE]
    pick = next(i for i in imgs[1:] if i.instances)  # a class and a threshold that drop the first card
    cls = pick.instances[0].class_id
    lo = round(pick.review_score, 4)
    name = finished.names[cls]
    url = page.index.as_uri() + f"#class={name}&min={lo}"
    doc = Cards(browse(url, "--dump-dom"))
    want = [i for i in imgs if round(i.review_score, 4) >= lo and any(x.class_id == cls for x in i.instances)]
    assert [c["rel"] for c in doc.cards] == [i.rel_path for i in want] and pick in want
    if round(imgs[0].review_score, 4) < lo:
        assert imgs[0].rel_path not in [c["rel"] for c in doc.cards]
    for card in doc.cards:
        assert card["polygons"] and {c for c, _ in card["polygons"]} == {cls}  # only the chosen class drawn
    assert doc.status.startswith(f"{len(want)} of {len(imgs)}")
    # the empty image: only with class=(none); a max below 1 drops it
    last = (len(page.images) - 1) // PER_PAGE + 1
    base = page.index.as_uri() + f"#page={last}"
    assert [c["rel"] for c in Cards(browse(base + "&class=(none)", "--dump-dom")).cards] == [page.images[-1].rel_path]
    assert Cards(browse(base + "&max=0.99", "--dump-dom")).cards == []


@pytest.mark.slow
def test_screenshot(page):
    shot = page.dest.parent / "review_page.png"
    browse(page.index.as_uri(), f"--screenshot={shot}", "--window-size=1280,900")
    png = cv2.imread(str(shot))
    assert png is not None and png.shape[:2] == (900, 1280)
    assert float(png.std()) > 20  # not a blank page
    # polygons drawn: the class colours of page 1 are on screen
    for cid in {i.class_id for img in page.images[:PER_PAGE] for i in img.instances}:
        r, g, b = class_color(cid)
        near = np.abs(png.astype(int) - (b, g, r)).sum(axis=2) < 60
        assert near.sum() > 50, f"class {cid} colour not on the screenshot"
    if os.environ.get("ANNOTATOR_UPDATE_SCREENSHOT"):
        shutil.copy(shot, REPO / "docs" / "review_page.png")


# --- escaping and files, no browser needed (one browser check of a hostile name) --------------------------------


def _fake_run(tmp_path: Path, names: dict[int, str], images: list[tuple[str, list]]):
    root = tmp_path / "in"
    found = []
    for rel, insts in images:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.full((40, 60, 3), 90, np.uint8))
        found.append(SimpleNamespace(rel_path=rel, path=p, image_hw=(40, 60), status="ok", instances=tuple(insts),
                                     review_score=min((i.det_conf * i.sam_score for i in insts), default=1.0)))
    return SimpleNamespace(output_dir=tmp_path / "out", data_root=root, names=names, model_version="m@1+s@2",
                           images=lambda: iter(found))


def _inst(cid, det, sam):
    return PolygonInstance(cid, det, sam, [np.array([[1.0, 1.0], [30.0, 2.0], [20.0, 30.0]])], 300, (1, 1, 29, 29))


def test_escaping_and_stale_pages(tmp_path):
    evil = '</script><img src=x onerror="alert(1)">&amp;'
    run = _fake_run(tmp_path, {0: evil, 1: "ok"}, [
        ("x/</script>#1 %20.png", [_inst(0, 0.5, 0.5)]),
        ("y.png", [_inst(1, 0.9, 0.9), _inst(0, 0.8, 0.9)]),
        ("z.png", []),
    ])  # fmt: skip
    dest = tmp_path / "review"
    (dest / "data").mkdir(parents=True)
    (dest / "data" / "page-0009.js").write_text("stale")
    (dest / "data" / "keep.txt").write_text("mine")
    index = write_review_page(run, dest, per_page=2, overlays=True)
    text = index.read_text()
    assert "</script><img" not in text and "onerror=\"" not in text
    assert sorted(p.name for p in (dest / "data").iterdir()) == ["keep.txt", "page-0001.js", "page-0002.js"]
    meta = json.loads(text.split('<script id="meta" type="application/json">')[1].split("</script>")[0])
    assert meta["names"] == [evil, "ok"] and meta["n_images"] == 3 and meta["n_pages"] == 2
    assert [p[:2] for p in meta["pages"]] == [[0.25, 0.72], [1.0, 1.0]] and meta["pages"][1][2] == [-1]
    js = (dest / "data" / "page-0001.js").read_text()
    assert "</script>" not in js and js.startswith("reviewPage(1,[")
    items = json.loads(js[len("reviewPage(1,") : -len(");\n")])
    assert [i["r"] for i in items] == ["x/</script>#1 %20.png", "y.png"]
    assert items[0]["src"] == "../in/x/%3C/script%3E%231%20%2520.png"  # a relative URL, percent-encoded
    assert (dest / "overlays" / "x" / "</script>#1 %20.png.png").is_file()
    assert items[0]["ov"] == "overlays/x/%3C/script%3E%231%20%2520.png.png"
    with pytest.raises(ValueError):
        write_review_page(run, dest, per_page=0)


@pytest.mark.slow
def test_hostile_strings_render_as_text(tmp_path):
    evil = '<img id="pwned" src=x>'
    run = _fake_run(tmp_path, {0: evil}, [("a/<b id=\"pwned2\">.png", [_inst(0, 0.5, 0.5)])])
    index = write_review_page(run, tmp_path / "review")
    dom = browse(index.as_uri(), "--dump-dom")
    ids = set()
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: ids.update(v for k, v in attrs if k == "id")
    parser.feed(dom)
    assert "meta" in ids and not ids & {"pwned", "pwned2"}  # shown as text, never parsed as HTML
    cards = Cards(dom).cards
    assert len(cards) == 1 and evil in cards[0]["text"] and cards[0]["rel"] == 'a/<b id="pwned2">.png'
