"""A static review page: every image of a finished run with its polygons drawn over it, no server needed.

:func:`write_review_page` writes ``dest/index.html`` and ``dest/data/page-0001.js, page-0002.js, ...``:

* **Opens from disk** (``file://``): page data are plain ``<script>`` files that call ``reviewPage(n, items)``
  (browsers refuse ``fetch()`` of local JSON); images are referenced by their path relative to ``dest``, so the
  page keeps working while ``dest`` and the input folder keep their relative place.
* **Sorted by review priority**: ``review_score`` ascending (the least sure images first), then ``rel_path``.
* **Paginated**: ``per_page`` images per data file; the index holds only the counts and, per page, the score
  range and the classes present (100,000 images = 500 small data files, one loaded at a time).
* **Drawn in the browser**: an inline SVG over each ``<img>`` (``viewBox`` = image size), one ``<polygon>`` per
  part, class colours from a fixed palette by class id, ``det_conf x sam_score`` per instance, the image's
  review score on its card, and the number of its dropped detections (``records.DropReason``) when there are any.
* **Filters in the URL**: ``#page=2&class=circle&class=triangle&min=0.2&max=0.9`` (``class=(none)`` keeps the
  images without objects). The controls (class check boxes, min / max score sliders) edit that state, so a view
  can be bookmarked or shared. An image is shown when its review score is in ``[min, max]`` and it has an
  instance of a checked class; only checked classes are drawn. Prev / next skip pages that can not match.
* **Overlays on request**: ``overlays=True`` also writes ``dest/overlays/<rel_path>.png`` (OpenCV, the same
  colours); a card links to its overlay, and shows it instead of an input a browser can not display (TIFF, ...).

* **Video frames** (a run with videos): every written frame is a card (its frame JPEG), with ``#<track id>`` after
  each mask's class (on the image and in the list; tooltip: track and video); a video selector filters by video
  (``#video=clips/a.mp4``; ``(images)``: the images only), and the index keeps, per page, the videos it holds.

Every string reaches the page as JSON (``<``, ``>``, ``&`` escaped) and is put in the DOM as text, never as HTML.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import tempfile
import urllib.parse
from pathlib import Path, PurePosixPath

import numpy as np

from annotator.finished import FinishedImage, FinishedRun
from annotator.io_atomic import atomic_write_bytes, atomic_write_text, ensure_real_dir, remove_file
from annotator.review.xml_text import xml_legal

__all__ = ["PALETTE_RGB", "class_color", "write_review_page"]

log = logging.getLogger(__name__)

#: 20 distinct colours (RGB); class ``i`` gets ``PALETTE_RGB[i % 20]`` on the page and in the overlays.
PALETTE_RGB: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
    (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 225, 25), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 250, 200),
)
#: inputs a browser shows in an ``<img>``; others are shown through their overlay when there is one.
_BROWSER_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".avif"})
_PAGE_RE = re.compile(r"^page-\d+\.js$")


def class_color(class_id: int) -> tuple[int, int, int]:
    """The RGB colour of a class id (a fixed palette, so colours agree between runs and pages)."""
    return PALETTE_RGB[int(class_id) % len(PALETTE_RGB)]


def _js_json(obj: object) -> str:
    """JSON that is safe inside ``<script>`` and as a JS literal (no ``</script>``, no U+2028)."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _url_from(dest: Path, target: Path) -> str:
    """A relative URL from ``dest`` to ``target`` (percent-encoded); a ``file:`` URI across drives."""
    try:
        rel = Path(os.path.relpath(target, dest)).as_posix()
    except ValueError:  # another drive (Windows)
        return target.absolute().as_uri()
    return urllib.parse.quote(rel, safe="/")


def _overlay_rel(rel_path: str) -> PurePosixPath | None:
    p = PurePosixPath(rel_path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return PurePosixPath("overlays", *p.parts[:-1], p.name + ".png")


def _draw_overlay(bgr: np.ndarray, img: FinishedImage, names: dict[int, str]) -> np.ndarray:
    """The image with its polygons filled (35 %), outlined and labelled in class colours."""
    import cv2

    h, w = bgr.shape[:2]
    fill = bgr.copy()
    outlines = []
    for inst in img.instances:
        r, g, b = class_color(inst.class_id)
        pts = [np.round(np.asarray(p, np.float64) * 4).astype(np.int32).reshape(-1, 1, 2) for p in inst.polygons_xy_px]
        pts = [p for p in pts if len(p) >= 3]
        if pts:
            cv2.fillPoly(fill, pts, (b, g, r), cv2.LINE_AA, shift=2)
            outlines.append((inst, pts, (b, g, r)))
    out = cv2.addWeighted(fill, 0.35, bgr, 0.65, 0)
    thick = max(1, round(max(h, w) / 400))
    scale = max(0.4, max(h, w) / 900)
    for inst, pts, color in outlines:
        cv2.polylines(out, pts, True, color, thick, cv2.LINE_AA, shift=2)
    for inst, pts, color in outlines:
        x0 = int(min(p[:, 0, 0].min() for p in pts) / 4)
        y0 = int(min(p[:, 0, 1].min() for p in pts) / 4)
        track = f" #{inst.track_id}" if getattr(inst, "track_id", None) is not None else ""
        label = f"{names.get(inst.class_id, f'class{inst.class_id}')}{track} {inst.det_conf * inst.sam_score:.2f}"
        org = (max(0, x0), max(int(14 * scale), y0 - 3))
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)
    return out


def _write_overlay(img: FinishedImage, dest: Path, names: dict[int, str]) -> str | None:
    """Write ``dest/overlays/<rel_path>.png``; its URL from ``dest``, or None (logged) when it can't be made."""
    import cv2

    from annotator.image_decode import ImageDecodeError, load_image
    from annotator.records import SourceItem

    rel = _overlay_rel(img.rel_path)
    if rel is None:
        return None
    try:
        bgr = load_image(SourceItem(img.path, img.rel_path)).image_bgr
    except (ImageDecodeError, OSError) as e:
        log.warning("no overlay for %s: %s", img.rel_path, e)
        return None
    _, buf = cv2.imencode(".png", _draw_overlay(bgr, img, names))
    atomic_write_bytes(dest.joinpath(*rel.parts), buf.tobytes(), root=dest)
    return urllib.parse.quote(rel.as_posix(), safe="/")


def _item(img: FinishedImage, dest: Path, overlay_url: str | None) -> dict:
    """One image as the page reads it (short keys: 100,000 of them travel)."""
    h, w = img.image_hw
    src = _url_from(dest, img.path)
    if overlay_url and img.path.suffix.lower() not in _BROWSER_SUFFIXES:
        src = overlay_url
    inst = [
        [int(i.class_id), round(float(i.det_conf), 4), round(float(i.sam_score), 4),
         [[round(float(v), 1) for v in np.asarray(p, np.float64).reshape(-1)] for p in i.polygons_xy_px]]
        + ([int(i.track_id)] if getattr(i, "track_id", None) is not None else [])  # a video frame's: track id
        for i in img.instances
    ]  # fmt: skip
    item = {"r": img.rel_path, "src": src, "w": int(w), "h": int(h), "s": round(img.review_score, 4), "i": inst}
    if getattr(img, "video", None) is not None:
        item["v"], item["f"] = img.video, int(img.frame_index)
    if overlay_url:
        item["ov"] = overlay_url
    if getattr(img, "dropped", None):  # detections that gave no label row: an object may be missing
        item["dr"] = int(sum(img.dropped.values()))
    return item


def write_review_page(run: FinishedRun, dest: Path, *, per_page: int = 200, overlays: bool = False) -> Path:
    """A static HTML gallery in dest/ (index.html + data pages), no server: opens from disk (file://).

    Args:
        run: a finished output folder (:func:`annotator.finished.open_finished`).
        dest: the folder to write (created); ``data/page-*.js`` files of an earlier, longer export are removed.
        per_page: images per page (and per data file).
        overlays: also write ``dest/overlays/<rel_path>.png``: each image with its polygons drawn (OpenCV).

    Returns:
        the path of ``index.html``.

    Memory stays flat: one pass over the run spools each image's data to a temporary file; only the sort keys
    stay in memory.
    """
    if int(per_page) < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page!r}")
    from annotator.path_guard import check_review_dest, protect, run_input

    per_page, dest = int(per_page), Path(dest).expanduser().absolute()
    check_review_dest(run, dest)
    with protect(inputs=[run_input(run)], output=[dest, run.output_dir]):
        return _write_review_page(run, dest, per_page, overlays)


def _write_review_page(run, dest: Path, per_page: int, overlays: bool) -> Path:
    ensure_real_dir(dest)
    data_dir = ensure_real_dir(dest / "data", dest)
    names = dict(run.names)
    keys: list[tuple[float, str, int, int, tuple[int, ...], int]] = []
    videos: dict[str, int] = {}  # video -> its index in meta["videos"] (-1 on a page: an image)
    written: set[str] = set()
    pages_meta: list[list] = []
    with tempfile.TemporaryFile() as spool:
        for img in run.images():
            for i in img.instances:
                names.setdefault(int(i.class_id), f"class{int(i.class_id)}")
            ov = _write_overlay(img, dest, names) if overlays else None
            blob = _js_json(_item(img, dest, ov)).encode("ascii")
            classes = tuple(sorted({int(i.class_id) for i in img.instances})) or (-1,)
            video = -1 if getattr(img, "video", None) is None else videos.setdefault(img.video, len(videos))
            keys.append((round(img.review_score, 4), img.rel_path, spool.tell(), len(blob), classes, video))
            spool.write(blob)
        keys.sort(key=lambda k: (k[0], k[1]))
        n_pages = -(-len(keys) // per_page)
        pad = max(4, len(str(n_pages)))
        for p in range(n_pages):
            chunk = keys[p * per_page : (p + 1) * per_page]
            blobs = []
            for _, _, offset, length, _, _ in chunk:
                spool.seek(offset)
                blobs.append(spool.read(length).decode("ascii"))
            name = f"page-{p + 1:0{pad}d}.js"
            atomic_write_text(data_dir / name, f"reviewPage({p + 1},[\n" + ",\n".join(blobs) + "\n]);\n", root=dest)
            written.add(name)
            present = sorted({c for k in chunk for c in k[4]})
            pages_meta.append([chunk[0][0], chunk[-1][0], present])
            if videos:  # a run with videos: which videos (-1: images) each page holds, for the video filter
                pages_meta[-1].append(sorted({k[5] for k in chunk}))
    for old in data_dir.iterdir():
        if _PAGE_RE.match(old.name) and old.name not in written and not old.is_dir():
            remove_file(old)
    n_classes = max(names) + 1 if names else 0
    meta = {
        "title": f"Review: {run.output_dir.name}",
        "output_dir": str(run.output_dir),
        "data_root": str(run.data_root),
        "model_version": run.model_version,
        "names": [names.get(i, f"class{i}") for i in range(n_classes)],
        "colors": ["#%02x%02x%02x" % class_color(i) for i in range(n_classes)],
        "per_page": per_page,
        "n_images": len(keys),
        "n_pages": n_pages,
        "pad": pad,
        "pages": pages_meta,
    }
    if videos:
        meta["videos"] = sorted(videos, key=videos.get)
    index = dest / "index.html"
    fill = {"__TITLE__": html.escape(xml_legal(meta["title"])), "__META__": _js_json(meta)}
    page = re.sub("__TITLE__|__META__", lambda m: fill[m.group()], _TEMPLATE)  # one pass: a name holding either stays
    atomic_write_text(index, page, root=dest)
    return index


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{margin:0;font:14px/1.35 system-ui,sans-serif;background:#f3f4f6;color:#111}
header{position:sticky;top:0;z-index:2;background:#1f2937;color:#f9fafb;padding:8px 14px;box-shadow:0 1px 4px #0004}
h1{font-size:17px;margin:0 0 2px}.sub{color:#cbd5e1;font-size:12px;word-break:break-all}
#controls{display:flex;flex-wrap:wrap;gap:6px 18px;align-items:center;margin-top:6px}
#classes label{margin-right:10px;white-space:nowrap;cursor:pointer}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin:0 4px -1px 2px;border:1px solid #0006}
input[type=range]{width:120px;vertical-align:middle}
button{font:inherit;padding:2px 9px;border-radius:4px;border:1px solid #94a3b8;background:#e5e7eb;cursor:pointer}
button:disabled{opacity:.45;cursor:default}#pageno{width:60px}
#status{color:#fde68a}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:12px;padding:12px}
.card{background:#fff;border-radius:6px;box-shadow:0 1px 3px #0003;overflow:hidden}
.head{display:flex;gap:8px;align-items:baseline;padding:6px 8px;border-bottom:1px solid #e5e7eb}
.rank{color:#6b7280}.path{flex:1;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-weight:600}
.score{padding:0 6px;border-radius:9px;color:#fff;font-weight:600}
.fig{position:relative;background:#d1d5db}.fig img,.fig svg{position:absolute;inset:0;width:100%;height:100%}
.fig img{object-fit:fill}.fig text{paint-order:stroke;stroke:#000;font-family:sans-serif;font-weight:700}
.insts{margin:0;padding:5px 8px;list-style:none;font-size:13px}.insts li{white-space:nowrap}
.num{color:#374151;font-variant-numeric:tabular-nums}.links{padding:0 8px 6px;font-size:12px}
#msg{padding:20px;color:#374151}#msg:empty{display:none}
</style></head><body>
<header><h1 id="title"></h1><div class="sub" id="info"></div>
<div id="controls"><span id="classes"></span><span id="videos" hidden></span>
<span>score <label>min <input type="range" id="min" min="0" max="1" step="0.01"></label> <b id="minv"></b>
<label>max <input type="range" id="max" min="0" max="1" step="0.01"></label> <b id="maxv"></b></span>
<span><button id="prev">&#8249; prev</button> page <input type="number" id="pageno" min="1"> / <span id="npages"></span>
<button id="next">next &#8250;</button></span><span id="status"></span></div></header>
<div id="msg"></div><main id="cards"></main>
<script id="meta" type="application/json">__META__</script>
<script>
(function () {
"use strict";
var M = JSON.parse(document.getElementById("meta").textContent);
var SVG = "http://www.w3.org/2000/svg", cache = {}, S = null;
function $(id) { return document.getElementById(id); }
function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
function sv(tag, attrs) { var e = document.createElementNS(SVG, tag); for (var k in attrs) e.setAttribute(k, attrs[k]); return e; }
function name(c) { return c < 0 ? "(none)" : (M.names[c] !== undefined ? M.names[c] : "class" + c); }
function color(c) { return M.colors[c] || "#888"; }
function allClasses() { var a = [-1]; for (var i = 0; i < M.names.length; i++) a.push(i); return a; }
function parse() {
  var q = new URLSearchParams(location.hash.replace(/^#/, "")), s = {};
  s.page = Math.min(Math.max(parseInt(q.get("page"), 10) || 1, 1), Math.max(M.n_pages, 1));
  var want = q.getAll("class");
  if (!want.length) { s.classes = new Set(allClasses()); }
  else {
    s.classes = new Set();
    want.forEach(function (v) {
      var parts = allClasses().some(function (c) { return name(c) === v; }) ? [v] : v.split(",");
      parts.forEach(function (n) { allClasses().forEach(function (c) { if (name(c) === n) s.classes.add(c); }); });
    });
  }
  s.video = q.get("video"); if (s.video === null || !M.videos) s.video = "";
  s.min = parseFloat(q.get("min")) || 0; s.max = parseFloat(q.get("max"));
  if (isNaN(s.max)) s.max = 1;
  return s;
}
function go(s) {
  var q = new URLSearchParams();
  if (s.page !== 1) q.set("page", s.page);
  if (!s.classes.size) q.append("class", "");
  else if (s.classes.size !== allClasses().length) allClasses().forEach(function (c) { if (s.classes.has(c)) q.append("class", name(c)); });
  if (s.min > 0) q.set("min", s.min);
  if (s.max < 1) q.set("max", s.max);
  if (s.video) q.set("video", s.video);
  var h = q.toString();
  if (h === location.hash.replace(/^#/, "")) apply(); else location.hash = h;
}
function copy() { return {page: S.page, classes: new Set(S.classes), min: S.min, max: S.max, video: S.video}; }
function videoIndex(v) { return v === "(images)" ? -1 : (M.videos || []).indexOf(v); }
function pageMayMatch(p) {
  var st = M.pages[p - 1];
  return st && st[1] >= S.min && st[0] <= S.max && st[2].some(function (c) { return S.classes.has(c); }) &&
    (!S.video || !st[3] || st[3].indexOf(videoIndex(S.video)) >= 0);
}
function matches(it) {
  if (it.s < S.min || it.s > S.max) return false;
  if (S.video && (S.video === "(images)" ? it.v !== undefined : it.v !== S.video)) return false;
  if (!it.i.length) return S.classes.has(-1);
  return it.i.some(function (x) { return S.classes.has(x[0]); });
}
function nearest(step) {
  for (var p = S.page + step; p >= 1 && p <= M.n_pages; p += step) if (pageMayMatch(p)) return p;
  return 0;
}
function controls() {
  var box = $("classes"); box.textContent = "";
  allClasses().forEach(function (c) {
    var lab = el("label"), cb = el("input"); cb.type = "checkbox"; cb.checked = S.classes.has(c);
    cb.dataset.cls = c;
    cb.onchange = function () { var s = copy(); if (cb.checked) s.classes.add(c); else s.classes.delete(c); go(s); };
    var sw = el("span", "sw"); sw.style.background = c < 0 ? "#fff" : color(c);
    lab.append(cb, sw, document.createTextNode(name(c))); box.append(lab);
  });
  var vs = $("videos"); vs.textContent = ""; vs.hidden = !M.videos;
  if (M.videos) {
    var sel = el("select"); sel.id = "video";
    ["", "(images)"].concat(M.videos).forEach(function (v) {
      var o = el("option", "", v || "all images and videos"); o.value = v; sel.append(o);
    });
    sel.value = S.video; sel.onchange = function () { var s = copy(); s.video = sel.value; s.page = 1; go(s); };
    vs.append(document.createTextNode("video "), sel);
  }
  $("min").value = S.min; $("max").value = S.max;
  $("minv").textContent = S.min.toFixed(2); $("maxv").textContent = S.max.toFixed(2);
  $("pageno").value = S.page; $("pageno").max = M.n_pages; $("npages").textContent = M.n_pages;
  $("prev").disabled = !nearest(-1); $("next").disabled = !nearest(1);
}
function load(p) {
  if (cache[p]) { render(); return; }
  $("msg").textContent = "loading page " + p + "\u2026";
  var sc = document.createElement("script"), num = String(p);
  while (num.length < M.pad) num = "0" + num;
  sc.src = "data/page-" + num + ".js";
  sc.onerror = function () { $("msg").textContent = "could not load " + sc.src + " (was the export moved or cut short?)"; };
  document.head.appendChild(sc);
}
window.reviewPage = function (p, items) {
  cache[p] = items;
  Object.keys(cache).forEach(function (k) { if (Math.abs(k - p) > 2) delete cache[k]; });
  if (S && p === S.page) render();
};
function scoreColor(s) { return s < 0.3 ? "#dc2626" : s < 0.6 ? "#d97706" : "#16a34a"; }
function card(it, rank) {
  var c = el("div", "card"); c.dataset.rel = it.r; c.dataset.score = it.s;
  if (it.v !== undefined) { c.dataset.video = it.v; c.dataset.frame = it.f; }
  var head = el("div", "head"), path = el("span", "path", it.r), sc = el("span", "score", it.s.toFixed(2));
  path.title = it.v !== undefined ? it.v + ", frame " + it.f : it.r;
  sc.style.background = scoreColor(it.s); sc.title = "review score (lowest det x sam)";
  head.append(el("span", "rank", "#" + rank), path, sc);
  if (it.dr) { var dr = el("span", "score", it.dr + " dropped"); dr.style.background = "#7c3aed";
    dr.title = "detections without a label row (too small, low SAM score, empty mask): an object may be missing";
    head.append(dr); }
  var fig = el("div", "fig"); fig.style.aspectRatio = it.w + " / " + it.h;
  var img = el("img"); img.loading = "lazy"; img.alt = it.r; img.src = it.src;
  var svg = sv("svg", {viewBox: "0 0 " + it.w + " " + it.h, preserveAspectRatio: "none"});
  var fs = Math.max(it.w, it.h) / 26, list = el("ul", "insts");
  it.i.forEach(function (x) {
    var cls = x[0], col = color(cls), sc2 = x[1] * x[2], tr = x.length > 4 ? " #" + x[4] : "";
    var li = el("li"), sw = el("span", "sw"); sw.style.background = col; li.dataset.cls = cls;
    if (tr) { li.dataset.track = x[4]; li.title = "track " + x[4] + " of " + it.v; }
    li.append(sw, document.createTextNode(name(cls) + tr + " "),
      el("span", "num", x[1].toFixed(2) + " \u00d7 " + x[2].toFixed(2) + " = " + sc2.toFixed(2)));
    list.append(li);
    if (!S.classes.has(cls)) { li.style.opacity = 0.4; return; }
    var g = sv("g", {"data-class": cls}), x0 = Infinity, y0 = Infinity;
    if (tr) {
      g.setAttribute("data-track", x[4]);
      var tt = sv("title", {}); tt.textContent = name(cls) + " track " + x[4]; g.append(tt);
    }
    x[3].forEach(function (f) {
      var pts = [];
      for (var k = 0; k + 1 < f.length; k += 2) { pts.push(f[k] + "," + f[k + 1]); x0 = Math.min(x0, f[k]); y0 = Math.min(y0, f[k + 1]); }
      g.append(sv("polygon", {points: pts.join(" "), fill: col, "fill-opacity": 0.3, stroke: col, "stroke-width": 2,
        "vector-effect": "non-scaling-stroke", "data-class": cls}));
    });
    if (x[3].length) {
      var t = sv("text", {x: x0, y: Math.max(fs, y0 - fs * 0.2), "font-size": fs, fill: col, "stroke-width": fs / 8});
      t.textContent = name(cls) + tr + " " + sc2.toFixed(2); g.append(t);
    }
    svg.append(g);
  });
  if (!it.i.length) list.append(el("li", "num", "no objects"));
  fig.append(img, svg); c.append(head, fig, list);
  var links = el("div", "links"), a = el("a", "", "image"); a.href = it.src; links.append(a);
  if (it.ov) { var o = el("a", "", "overlay"); o.href = it.ov; links.append(document.createTextNode(" \u00b7 "), o); }
  c.append(links);
  return c;
}
function render() {
  var items = cache[S.page], main = $("cards"); main.textContent = "";
  if (!items) return;
  var shown = 0;
  items.forEach(function (it, k) {
    if (!matches(it)) return;
    main.append(card(it, (S.page - 1) * M.per_page + k + 1)); shown++;
  });
  $("status").textContent = shown + " of " + items.length + " images on this page match";
  $("msg").textContent = shown ? "" : "no image on this page matches the filters" +
    (nearest(1) ? " (next match: page " + nearest(1) + ")" : "");
  document.body.dataset.page = S.page;
}
function apply() {
  S = parse(); controls();
  if (!M.n_pages) { $("msg").textContent = "this run has no processed images"; return; }
  load(S.page);
}
$("title").textContent = M.title;
$("info").textContent = M.n_images + " images \u00b7 " + M.per_page + " per page \u00b7 sorted by review score " +
  "(lowest det_conf \u00d7 sam_score first) \u00b7 models " + M.model_version + " \u00b7 inputs " + M.data_root;
$("min").onchange = function () { var s = copy(); s.min = parseFloat(this.value); go(s); };
$("max").onchange = function () { var s = copy(); s.max = parseFloat(this.value); go(s); };
$("min").oninput = function () { $("minv").textContent = parseFloat(this.value).toFixed(2); };
$("max").oninput = function () { $("maxv").textContent = parseFloat(this.value).toFixed(2); };
$("prev").onclick = function () { var s = copy(); s.page = nearest(-1) || s.page; go(s); };
$("next").onclick = function () { var s = copy(); s.page = nearest(1) || s.page; go(s); };
$("pageno").onchange = function () { var s = copy(); s.page = parseInt(this.value, 10) || 1; go(s); };
window.addEventListener("hashchange", apply);
apply();
})();
</script></body></html>
"""
