"""Label Studio export of a finished output folder: tasks with the model's polygons as *predictions*.

:func:`export_labelstudio` writes two files into ``dest``:

* ``labeling_config.xml`` -- the project's labeling interface (:func:`labeling_config`): one ``<Image
  name="image">`` and one ``<PolygonLabels name="label">`` with a ``<Label>`` per detector class.
* ``tasks.json`` -- one task per processed image (``ok`` and ``empty``), to import into a project that uses
  that config (UI: *Import*; API: ``POST /api/projects/<id>/import``). The polygons come in as
  **predictions** (pre-annotations), never as annotations: a reviewer opens a task, sees the model's regions,
  corrects them and submits; nothing counts as labelled until someone did.

Task shape (one image with one object of two parts; numbers shortened)::

    {"data": {"image": "/data/local-files/?d=data/shapes/images/sub/0001.jpg", "rel_path": "sub/0001.jpg"},
     "predictions": [{
        "model_version": "shapes_yolo11n.pt@1a2b3c4d5e6f+sam2_t.pt@0f9e8d7c6b5a",
        "score": 0.61,                      # the image's review_score: lowest det_conf x sam_score
        "result": [
          {"id": "o0p0", "from_name": "label", "to_name": "image", "type": "polygonlabels",
           "original_width": 320, "original_height": 240, "image_rotation": 0,
           "value": {"points": [[12.5, 40.0], ...], "closed": true, "polygonlabels": ["circle"]},
           "score": 0.61,                   # det_conf x sam_score of this object
           "meta": {"text": ["object 1/1, part 1/2: det_conf 0.700, sam_score 0.871"],
                    "object": 0, "part": 0, "parts": 2, "class_id": 0, "det_conf": 0.7, "sam_score": 0.871}},
          {"id": "o0p1", "parentID": "o0p0", ... "meta": {..., "part": 1, ...}}]}]}

Video frames (:mod:`annotator.video`): every written frame of a finished video is one task, after the same
rules, with ``data.video`` (the video's path relative to the data folder) and ``data.frame_index`` (source frame
number) besides ``data.rel_path`` (``<video>/<frame_index:06d>.jpg``); each region's ``meta`` has ``track_id``
(the object's id within its video, also in ``meta.text``: ``object 1/2, part 1/1, track 3: ...``) and its label
is the track's final class (the vote, as in the frame's label file). A frame's URL is its JPEG's own local-files
URL (``/data/local-files/?d=<absolute path>``: the frames lie in the output folder, not under ``data``; add a
*Local files* storage for the output folder too), or ``image_root + rel_path`` when ``image_root`` is given.
Images' tasks are unchanged.

Conventions:

* **Points** are in percent of the image: ``x / W * 100``, ``y / H * 100`` with ``(W, H)`` the EXIF-upright
  size the run labelled (``original_width`` / ``original_height``; ``image_rotation`` 0). Vertices are the
  same pixel positions as in the YOLO and COCO outputs (see :mod:`annotator.polygons`), unrounded.
* **Scores**: each region's ``score`` is its object's ``det_conf x sam_score``; the prediction's ``score`` is
  the image's :attr:`~annotator.finished.FinishedImage.review_score` (the lowest of those; 1.0 for an image
  with no object). Sorting the Data Manager by *Prediction score* ascending (or the project's sampling
  "uncertainty") therefore shows the images most in need of review first. The two factors are kept in the
  region's ``meta`` (``det_conf``, ``sam_score``), which Label Studio stores and keeps when a reviewer turns
  the prediction into an annotation; ``meta.text`` is the line its region panel shows.
* **Objects with several parts** (a mask cut in two by an occluder): Label Studio has no multi-polygon
  region, so each part is its own polygon region with the object's label and score. The parts of one object
  are tied together by the region ``parentID`` -- every further part names the object's largest part as its
  parent, which the editor's region list shows as one object with its parts nested under it (and which it
  writes back on submit) -- and, for tools that read the JSON, by the ids ``o<k>p<j>`` (object ``k`` of the
  image, part ``j``, 0 = largest) and ``meta.object`` / ``meta.part`` / ``meta.parts``. ``parentID`` was
  chosen over Label Studio relations (arrows between regions, drawn over the image: noise for reviewers)
  and over a shared label alone (it cannot tell two objects of one class apart).
* **Holes** can not be shown: a polygon region has one outer ring, so a mask's holes are filled in Label
  Studio, as in the YOLO polygon output (COCO ``segmentation`` RLE keeps them when the run wrote RLE).
  Label Studio's ``brushlabels`` regions (its own RLE of an RGBA bitmap) could carry holes exactly, but they
  are bitmaps: a reviewer can only paint or erase pixels, not move vertices, and they would not match the
  polygons the run wrote to YOLO/COCO. Review is about correcting the polygons, so polygons it is.
* **Image order** in ``tasks.json``: by review priority (lowest review_score first), ties by ``rel_path``;
  Label Studio numbers the tasks in import order.
* **Image URLs** (``data.image``) are ``image_root + rel_path``:

  - ``image_root=None`` (default): Label Studio's *local files* form, ``/data/local-files/?d=<path>``, with
    ``<path>`` the image's absolute path (URL-quoted, without the leading ``/``), i.e. relative to
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/``. Start Label Studio with
    ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/``, and add
    a *Local files* source storage to the project whose absolute path is the run's data folder (or a parent
    of it): Label Studio serves a local file only under such a storage. Do not sync that storage (it would
    add every image again as a task without predictions). With another document root, pass
    ``image_root="/data/local-files/?d=<data folder relative to that root>/"``.
  - ``image_root="http://host/images/"`` (any ``http(s)://`` or ``/``-rooted prefix): ``rel_path`` is
    URL-quoted (``/`` kept) and appended; the prefix is used as given, so end it with ``/``.
  - ``image_root="s3://bucket/prefix/"`` (also ``gs://``, ``azure-blob://``): ``rel_path`` is appended
    unquoted, because Label Studio takes the object key verbatim from such URLs and presigns it through the
    project's cloud storage (add that storage to the project, again without syncing).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from annotator.finished import FinishedImage, FinishedRun
from annotator.io_atomic import atomic_write_text
from annotator.review.xml_text import xml_attr, xml_legal

__all__ = ["export_labelstudio", "labeling_config", "image_url", "local_files_url", "task_for"]

FROM_NAME = "label"
TO_NAME = "image"
_CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")


def labeling_config(names: dict[int, str]) -> str:
    """Label Studio labeling config for polygon review: an ``Image`` named ``image`` (``$image``) and one
    ``PolygonLabels`` named ``label`` with a ``Label`` per class, in class-id order (values escaped by
    :mod:`annotator.review.xml_text`; ``tasks.json`` names the classes through the same :func:`xml_legal`).

    Example:
        >>> print(labeling_config({0: "cat", 1: 'a "b" & <c>'}))
        <View>
          <Image name="image" value="$image" zoom="true" zoomControl="true"/>
          <PolygonLabels name="label" toName="image">
            <Label value="cat"/>
            <Label value="a &quot;b&quot; &amp; &lt;c&gt;"/>
          </PolygonLabels>
        </View>
        <BLANKLINE>
    """
    labels = "".join(f"    <Label value={xml_attr(names[k])}/>\n" for k in sorted(names))
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <PolygonLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f"{labels}"
        "  </PolygonLabels>\n"
        "</View>\n"
    )




def _default_image_root(run: FinishedRun) -> str:
    root = run.data_root.as_posix().lstrip("/")
    return "/data/local-files/?d=" + quote(f"{root}/" if root else "", safe="/")


def image_url(rel_path: str, image_root: str) -> str:
    """``image_root`` + ``rel_path``: quoted (``/`` kept) unless ``image_root`` is a cloud-storage URL.

    Example:
        >>> image_url("sub/a b#1.jpg", "http://host/img/"), image_url("sub/a b.jpg", "s3://bkt/p/")
        ('http://host/img/sub/a%20b%231.jpg', 's3://bkt/p/sub/a b.jpg')
    """
    if image_root.startswith(_CLOUD_SCHEMES):
        return image_root + rel_path
    return image_root + quote(rel_path, safe="/")


def local_files_url(path: Path) -> str:
    """Label Studio's local-files URL of an absolute ``path`` under document root ``/``.

    Example:
        >>> local_files_url(Path("/out/images/clips/a b.mp4/000012.jpg"))
        '/data/local-files/?d=out/images/clips/a%20b.mp4/000012.jpg'
    """
    return "/data/local-files/?d=" + quote(Path(path).absolute().as_posix().lstrip("/"), safe="/")


def task_for(
    img: FinishedImage, names: dict[int, str], model_version: str, image_root: str, *, url: str | None = None
) -> dict:
    """One Label Studio task (``data`` + one prediction with every region of the image), see the module doc;
    ``url`` overrides ``image_root + rel_path`` as ``data.image``."""
    h, w = img.image_hw
    result = []
    n_obj = len(img.instances)
    for k, inst in enumerate(img.instances):
        score = float(inst.det_conf) * float(inst.sam_score)
        parts = inst.polygons_xy_px
        track_id = getattr(inst, "track_id", None)  # set on a video frame's objects
        track = f", track {int(track_id)}" if track_id is not None else ""
        for j, xy in enumerate(parts):
            pts = [[float(x) / w * 100.0, float(y) / h * 100.0] for x, y in xy.tolist()]
            region = {
                "id": f"o{k}p{j}",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "polygonlabels",
                "original_width": int(w),
                "original_height": int(h),
                "image_rotation": 0,
                "value": {"points": pts, "closed": True, "polygonlabels": [xml_legal(names[inst.class_id])]},
                "score": score,
                "meta": {
                    "text": [
                        f"object {k + 1}/{n_obj}, part {j + 1}/{len(parts)}{track}: "
                        f"det_conf {inst.det_conf:.3f}, sam_score {inst.sam_score:.3f}"
                    ],
                    "object": k,
                    "part": j,
                    "parts": len(parts),
                    "class_id": int(inst.class_id),
                    "det_conf": float(inst.det_conf),
                    "sam_score": float(inst.sam_score),
                },
            }
            if track_id is not None:  # a video frame's object: the same id on every frame of its video
                region["meta"]["track_id"] = int(track_id)
            if j:
                region["parentID"] = f"o{k}p0"
            result.append(region)
    data = {"image": url if url is not None else image_url(img.rel_path, image_root), "rel_path": img.rel_path}
    if getattr(img, "video", None) is not None:  # a video frame (annotator/video/)
        data["video"] = img.video
        data["frame_index"] = int(img.frame_index)
    return {
        "data": data,
        "predictions": [{"model_version": model_version, "score": float(img.review_score), "result": result}],
    }


def _frame_url(img: FinishedImage, image_root: str | None) -> str | None:
    """A video frame's URL under the default root: its JPEG's own local-files URL (it is not under ``data``)."""
    if image_root is None and getattr(img, "video", None) is not None:
        return local_files_url(img.path)
    return None


def export_labelstudio(run: FinishedRun, dest: Path, *, image_root: str | None = None) -> list[Path]:
    """Writes dest/tasks.json and dest/labeling_config.xml (atomic writes); returns the paths.

    Args:
        run: a finished output folder (:func:`annotator.finished.open_finished`).
        dest: folder to write into (created).
        image_root: prefix of the image URLs; None = Label Studio local files under document root ``/``. See
            the module doc for the exact URL rules and the Label Studio settings each needs.

    Returns:
        ``[dest / "tasks.json", dest / "labeling_config.xml"]``.
    """
    dest = Path(dest)
    root = _default_image_root(run) if image_root is None else str(image_root)
    names = run.names
    version = run.model_version
    # A task is small (polygon points only); sorting needs them all, and tasks.json is one JSON array anyway.
    tasks = [task_for(img, names, version, root, url=_frame_url(img, image_root)) for img in run.images()]
    tasks.sort(key=lambda t: (t["predictions"][0]["score"], t["data"]["rel_path"]))
    tasks_path, config_path = dest / "tasks.json", dest / "labeling_config.xml"
    # One task per line: diffable and greppable, without the bulk of an indented points list.
    body = ",\n".join(json.dumps(t, ensure_ascii=False, separators=(",", ":")) for t in tasks)
    atomic_write_text(tasks_path, f"[\n{body}\n]\n" if tasks else "[]\n")
    atomic_write_text(config_path, labeling_config(names))
    return [tasks_path, config_path]
