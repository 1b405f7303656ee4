"""CVAT export of a finished run: files CVAT (and its import library, datumaro) read as they are.

Two styles, both from one pass over the run (:func:`export_cvat`):

* ``"coco"``: the COCO 1.0 layout CVAT's COCO importer expects, ``dest/annotations/instances_default.json``
  (subset ``default``; datumaro finds the subset from that file name and refuses a COCO file anywhere else),
  plus an ``dest/images/`` folder (datumaro >= 1.0 needs it to exist; empty unless ``images`` is given).
  Images, categories, polygons, ``area`` and ``bbox`` are those of :mod:`annotator.formats.coco` (one
  annotation per instance, one polygon list per part, vertices at pixel centres); each annotation also
  carries the scores the way CVAT's COCO exporter writes attributes::

      "score": 0.7124,
      "attributes": {"occluded": false, "score": 0.7124, "det_conf": 0.8412, "sam_score": 0.8469}

* ``"xml"``: "CVAT for images 1.1", ``dest/annotations.xml``: a ``<meta><task>`` section with the labels and
  their attribute specs (``score``, ``det_conf``, ``sam_score``: numbers in ``[0, 1]``), then one ``<image>``
  per processed input (``id`` = frame index in input order, ``name`` = the path relative to the data root,
  ``width``, ``height``) holding one ``<polygon>`` per part::

      <image id="3" name="cam2/0001.jpg" width="320" height="320">
        <polygon label="circle" source="auto" occluded="0" points="10.5,10.5;10.5,30.5;30.5,30.5" z_order="0">
          <attribute name="score">0.7124</attribute>
          ...

  The parts of one multi-part mask are several ``<polygon>`` elements sharing a ``group_id`` (unique in the
  file, from 1); a single-part instance has none (group 0, as CVAT writes it).

Both styles keep sub-folders in the image names (``cam2/0001.jpg``): CVAT matches them to the frames of a
task made from the same folder tree. ``score`` is ``det_conf x sam_score`` (the number the review queue ranks
by; lower = look first), rounded to :data:`SCORE_DECIMALS` like the other two. In the COCO file the top-level
``score`` is that same number (datumaro copies a top-level ``score`` over ``attributes.score``), not the
detector confidence alone as in the annotator's own COCO output.

Video frames (:mod:`annotator.video`) are images here too (name ``<video>/<frame_index:06d>.jpg``, the frame
JPEG copied with ``images="copy"``), their objects with the track's final class and one more attribute,
``track_id`` (COCO ``attributes.track_id`` beside the annotator's top-level ``track_id``; XML ``<attribute
name="track_id">`` on each polygon of the object). It is declared (number, 0 .. the largest track id, step 1,
default 0 = not a frame's object) only when the run has video frames, so an image-only export is unchanged. An
attribute rather than a group: groups already tie the parts of one mask together, and a CVAT ``<track>`` (shapes
keyed by frame number) belongs to a video task, not to an images task that mixes images and several videos.

CVAT keeps an imported attribute only where the task's label declares it: ``dest/cvat_labels.json`` holds the
labels with their attribute specs in the form CVAT's label editor takes ("Raw" tab) when the task is created.

Example:
    >>> from annotator.finished import open_finished  # doctest: +SKIP
    >>> export_cvat(open_finished("runs/street"), Path("runs/street/cvat"))  # doctest: +SKIP
    [PosixPath('runs/street/cvat/annotations/instances_default.json'), PosixPath('runs/street/cvat/annotations.xml'),
     PosixPath('runs/street/cvat/cvat_labels.json')]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import IO

from annotator.errors import ConfigError
from annotator.finished import FinishedImage, FinishedRun
from annotator.formats.coco import coco_categories, coco_image_entry, instances_to_coco_annotations
from annotator.io_atomic import atomic_write_text, atomic_writer, ensure_real_dir, temp_path_in
from annotator.path_guard import check_write
from annotator.review.xml_text import xml_attr, xml_text

__all__ = [
    "COCO_PATH", "IMAGE_MODES", "LABELS_PATH", "SCORE_ATTRIBUTES", "STYLES", "TRACK_ATTRIBUTE", "XML_PATH",
    "export_cvat",
]  # fmt: skip

STYLES = ("coco", "xml", "both")
#: ``"none"``: annotations only (enough to upload into a task that has the images); ``"copy"``: the images too,
#: under ``dest/images/<rel_path>`` (hard links where the file system allows), making a dataset CVAT (or
#: datumaro) can import as a new task / project.
IMAGE_MODES = ("none", "copy")
SUBSET = "default"
COCO_PATH = f"annotations/instances_{SUBSET}.json"
XML_PATH = "annotations.xml"
LABELS_PATH = "cvat_labels.json"
IMAGES_DIR = "images"
SCORE_ATTRIBUTES = ("score", "det_conf", "sam_score")
#: a video frame's object: its track id (the same on every frame of its video; declared only for runs with videos)
TRACK_ATTRIBUTE = "track_id"
#: digits kept for the score attributes (and the step of their CVAT number spec).
SCORE_DECIMALS = 4
_SCORE_SPEC = {"min": "0", "max": "1", "step": f"{10.0 ** -SCORE_DECIMALS:.{SCORE_DECIMALS}f}"}
_COCO_DECIMALS = 2  # polygon / box digits, as the annotator's COCO output


def export_cvat(run: FinishedRun, dest: str | os.PathLike, *, style: str = "both", images: str = "none") -> list[Path]:
    """Write the CVAT export of ``run`` into ``dest`` (see the module docstring); returns the files written.

    Args:
        run: a finished output folder (:func:`annotator.finished.open_finished`).
        dest: the destination folder (created).
        style: ``"coco"`` (``dest/annotations/instances_default.json``), ``"xml"`` (``dest/annotations.xml``,
            "CVAT for images 1.1") or ``"both"``.
        images: ``"none"`` or ``"copy"`` (see :data:`IMAGE_MODES`); copied images are not in the returned list.

    Returns:
        The annotation file(s) and ``dest/cvat_labels.json``. A file whose bytes would not change is not touched.

    Raises:
        ValueError: an unknown ``style`` / ``images``.
        ConfigError: an image to copy is missing, or the run has no class names.
        OutputError: ``dest`` can not be written.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {IMAGE_MODES}, got {images!r}")
    if not run.names:
        raise ConfigError(f"{run.output_dir}: the run recorded no class names; run the annotate command again")
    dest = ensure_real_dir(Path(dest).expanduser().absolute())
    want_coco, want_xml = style in ("coco", "both"), style in ("xml", "both")
    names = dict(run.names)
    categories = coco_categories(names)

    spills: list[Path] = []
    files: list[IO[str]] = []
    try:
        for _ in range(3):  # coco images, coco annotations, xml images
            spills.append(temp_path_in(dest))
            files.append(open(spills[-1], "w", encoding="utf-8", newline="\n"))
        coco_images, coco_anns, xml_body = files
        n_images = n_anns = n_groups = max_track = 0
        for img in run.images():
            entry = coco_image_entry(n_images + 1, img.rel_path, img.image_hw)
            anns = _annotations(img, image_id=n_images + 1, first_annotation_id=n_anns + 1)
            max_track = max([max_track] + [a["attributes"].get(TRACK_ATTRIBUTE, 0) for a in anns])
            if want_coco:
                coco_images.write(_dumps(entry) + "\n")
                for a in anns:
                    coco_anns.write(_dumps(a) + "\n")
            if want_xml:
                n_groups = _write_xml_image(xml_body, n_images, entry, anns, names, n_groups)
            if images == "copy":
                _copy_image(img, dest)
            n_images += 1
            n_anns += len(anns)
        for f in files:
            f.close()

        written: list[Path] = []
        if want_coco:
            ensure_real_dir(dest / IMAGES_DIR, dest)  # datumaro >= 1.0 refuses a COCO folder without images/
            path = dest / COCO_PATH
            with atomic_writer(path, "w", root=dest) as out:
                info = {"description": f"annotator export of {run.output_dir.name}", "version": run.model_version}
                out.write('{"info":' + _dumps(info) + ',"licenses":[],"categories":' + _dumps(categories))
                out.write(',\n"images":[\n')
                _copy_lines(spills[0], out, ",\n")
                out.write('\n],\n"annotations":[\n')
                _copy_lines(spills[1], out, ",\n")
                out.write("\n]}\n")
            written.append(path)
        if want_xml:
            path = dest / XML_PATH
            with atomic_writer(path, "w", root=dest) as out:
                out.write('<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n')
                out.write(_xml_meta(run, names, n_images, max_track))
                _copy_lines(spills[2], out, "")
                out.write("</annotations>\n")
            written.append(path)
        labels_path = dest / LABELS_PATH
        atomic_write_text(labels_path, json.dumps(cvat_labels(names, max_track=max_track), indent=2) + "\n", root=dest)
        written.append(labels_path)
        return written
    finally:
        for f in files:
            f.close()
        for p in spills:
            with contextlib.suppress(FileNotFoundError):
                check_write(p, "remove")
                p.unlink()


def _track_spec(max_track: int) -> list[str]:
    """The ``track_id`` number spec: ``0`` (no track: an image's object) to the run's largest track id, step 1."""
    return ["0", str(max(int(max_track), 1)), "1"]


def cvat_labels(names: Mapping[int, str], *, max_track: int = 0) -> list[dict]:
    """The labels for CVAT's label editor ("Raw" tab), by class id, each with the score attribute specs (and,
    when the run has video frames, i.e. ``max_track`` > 0, the ``track_id`` spec).

    Example:
        >>> spec = cvat_labels({0: "circle"})[0]["attributes"][0]
        >>> spec["name"], spec["input_type"], spec["values"]
        ('score', 'number', ['0', '1', '0.0001'])
    """
    spec = [_SCORE_SPEC["min"], _SCORE_SPEC["max"], _SCORE_SPEC["step"]]
    return [
        {
            "name": str(names[c]),
            "type": "any",
            "attributes": [
                {"name": a, "mutable": False, "input_type": "number", "default_value": "0", "values": list(spec)}
                for a in SCORE_ATTRIBUTES
            ]
            + (
                [{"name": TRACK_ATTRIBUTE, "mutable": False, "input_type": "number", "default_value": "0",
                  "values": _track_spec(max_track)}]
                if max_track else []
            ),  # fmt: skip
        }
        for c in sorted(names)
    ]


def _score(v: float) -> float:
    return round(float(v), SCORE_DECIMALS)


def _annotations(img: FinishedImage, *, image_id: int, first_annotation_id: int) -> list[dict]:
    """The image's COCO annotations (:mod:`annotator.formats.coco`) with the scores as CVAT attributes."""
    anns = instances_to_coco_annotations(
        img.instances,
        image_id=image_id,
        first_annotation_id=first_annotation_id,
        decimals=_COCO_DECIMALS,
        image_hw=img.image_hw,
    )
    for a in anns:
        det, sam = float(a["score"]), float(a.pop("sam_score"))
        score = _score(det * sam)
        a["score"] = score  # datumaro copies it over attributes["score"]: keep them equal
        a["attributes"] = {"occluded": False, "score": score, "det_conf": _score(det), "sam_score": _score(sam)}
        if "track_id" in a:  # a video frame's object (the top-level key stays, as in the annotator's COCO)
            a["attributes"][TRACK_ATTRIBUTE] = int(a["track_id"])
    return anns


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _copy_lines(src: Path, dst: IO[str], sep: str) -> None:
    """Copy ``src``'s lines into ``dst``; with ``sep`` the lines are joined by it (no trailing newline)."""
    with open(src, encoding="utf-8") as f:
        if not sep:
            shutil.copyfileobj(f, dst)
            return
        first = True
        for line in f:
            line = line.rstrip("\n")
            if line:
                dst.write(line if first else sep + line)
                first = False


def _fmt(v: float) -> str:
    """A coordinate as short as it is exact: ``10.5``, ``12`` (never ``1e-05``)."""
    s = f"{float(v):.{_COCO_DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _write_xml_image(
    out: IO[str], frame: int, entry: dict, anns: list[dict], names: Mapping[int, str], n_groups: int
) -> int:
    """One ``<image>`` element; returns the last group id used."""
    out.write(
        f"  <image id=\"{frame}\" name={xml_attr(entry['file_name'])} "
        f"width=\"{entry['width']}\" height=\"{entry['height']}\">\n"
    )
    for a in anns:
        label = xml_attr(names[int(a["category_id"]) - 1])
        parts = a["segmentation"]
        group = ""
        if len(parts) > 1:
            n_groups += 1
            group = f' group_id="{n_groups}"'
        keys = SCORE_ATTRIBUTES + ((TRACK_ATTRIBUTE,) if TRACK_ATTRIBUTE in a["attributes"] else ())
        attrs = "".join(f'      <attribute name="{k}">{a["attributes"][k]}</attribute>\n' for k in keys)
        for flat in parts:
            points = ";".join(f"{_fmt(flat[i])},{_fmt(flat[i + 1])}" for i in range(0, len(flat), 2))
            out.write(
                f'    <polygon label={label} source="auto" occluded="0" points="{points}" z_order="0"{group}>\n'
                f"{attrs}    </polygon>\n"
            )
    out.write("  </image>\n")
    return n_groups


def _xml_meta(run: FinishedRun, names: Mapping[int, str], n_images: int, max_track: int = 0) -> str:
    """The ``<meta><task>`` section: task size and frames, labels with their attribute specs."""
    lines = [
        "  <meta>",
        "    <task>",
        f"      <name>{xml_text(run.output_dir.name)}</name>",
        f"      <size>{n_images}</size>",
        "      <mode>annotation</mode>",
        "      <overlap>0</overlap>",
        f"      <subset>{SUBSET}</subset>",
        "      <start_frame>0</start_frame>",
        f"      <stop_frame>{max(n_images - 1, 0)}</stop_frame>",
        "      <frame_filter></frame_filter>",
        "      <labels>",
    ]
    values = "\n".join((_SCORE_SPEC["min"], _SCORE_SPEC["max"], _SCORE_SPEC["step"]))
    for c in sorted(names):
        lines += [
            "        <label>",
            f"          <name>{xml_text(names[c])}</name>",
            "          <type>any</type>",
            "          <attributes>",
        ]
        for a in SCORE_ATTRIBUTES:
            lines += [
                "            <attribute>",
                f"              <name>{a}</name>",
                "              <mutable>False</mutable>",
                "              <input_type>number</input_type>",
                "              <default_value>0</default_value>",
                f"              <values>{values}</values>",
                "            </attribute>",
            ]
        if max_track:
            lines += [
                "            <attribute>",
                f"              <name>{TRACK_ATTRIBUTE}</name>",
                "              <mutable>False</mutable>",
                "              <input_type>number</input_type>",
                "              <default_value>0</default_value>",
                f"              <values>{chr(10).join(_track_spec(max_track))}</values>",
                "            </attribute>",
            ]
        lines += ["          </attributes>", "        </label>"]
    lines += [
        "      </labels>",
        "    </task>",
        f"    <source>annotator {xml_text(run.model_version)}</source>",
        "  </meta>",
    ]
    return "\n".join(lines) + "\n"


def _copy_image(img: FinishedImage, dest: Path) -> None:
    """``dest/images/<rel_path>``: a hard link to the input where possible, else a copy (skipped if present)."""
    rel = PurePosixPath(img.rel_path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"image path {img.rel_path!r} leaves the data root; can not place it under {dest}")
    target = dest / IMAGES_DIR / Path(*rel.parts)
    if not img.path.is_file():
        raise ConfigError(f"{img.path} is missing: restore the run's input images or export with images='none'")
    with contextlib.suppress(OSError):
        st_src, st_dst = os.stat(img.path), os.lstat(target)
        if st_dst.st_size == st_src.st_size and st_dst.st_mtime_ns >= st_src.st_mtime_ns:
            return
    ensure_real_dir(target.parent, dest)
    tmp = temp_path_in(target.parent)
    check_write(target, "replace")
    try:
        tmp.unlink()
        try:
            os.link(img.path, tmp)
        except OSError:
            shutil.copy2(img.path, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
