"""YOLO segmentation labels: pure converters beside one thin atomic writer.

Format (what ``ultralytics.data.utils.verify_image_label`` reads): one text file per image, named like the
image with ``.txt``; one row per instance ``class x1 y1 x2 y2 ...``, ``x`` divided by the image width and
``y`` by the height (``polygons_xy_norm``), at least 3 vertices. An image with no instance gets an empty
file (so "no objects" is told apart from "not labelled"). An instance with several parts is written as one
polygon, the parts joined by zero-width bridges exactly as Ultralytics' ``merge_multi_segment`` does, or as
its largest part only. With ``with_conf`` a detector confidence is appended (a prediction file, the layout
of Ultralytics' ``save_txt(save_conf=True)``: not a training label; the dataset writer never uses it, it
keeps confidences in ``scores.csv`` and COCO).

Example:
    >>> import numpy as np
    >>> from annotator.records import PolygonInstance
    >>> sq = np.array([[10, 10], [10, 30], [30, 30], [30, 10]], float)
    >>> inst = PolygonInstance(2, 0.8, 0.9, [sq], 441, (10.0, 10.0, 21.0, 21.0))
    >>> instances_to_yolo_lines([inst], (40, 80), decimals=3)
    ['2 0.125 0.250 0.125 0.750 0.375 0.750 0.375 0.250']
    >>> yolo_label_relpath("sub/a.jpg")
    'sub/a.txt'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Literal

import numpy as np

from annotator.io_atomic import atomic_write_text
from annotator.records import PolygonInstance

__all__ = [
    "data_yaml_text",
    "instances_to_yolo_lines",
    "merge_multi_segment",
    "polygons_to_yolo_xy",
    "write_yolo_labels",
    "yolo_label_relpath",
]


def _min_index(arr1: np.ndarray, arr2: np.ndarray) -> tuple[int, int]:
    """Indices ``(i, j)`` of the closest pair ``arr1[i]``, ``arr2[j]`` (first in row-major order on ties)."""
    dis = ((arr1[:, None, :] - arr2[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(dis, axis=None), dis.shape)
    return int(i), int(j)


def merge_multi_segment(segments: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Join several ``(K_i, 2)`` polygons into pieces whose concatenation is one polygon.

    A line-for-line reimplementation of ``ultralytics.data.converter.merge_multi_segment`` (numpy only, so
    importing this module does not import torch); ``np.concatenate(merge_multi_segment(parts))`` is the
    joined polygon. Consecutive parts are linked at their closest vertices and the path walks back over the
    same bridge, so the joined polygon rasterizes to the union of the parts.

    Example:
        >>> a = np.array([[0, 0], [0, 2], [2, 2], [2, 0]]); b = a + 10
        >>> np.concatenate(merge_multi_segment([a, b])).tolist()
        [[2, 2], [2, 0], [0, 0], [0, 2], [2, 2], [10, 10], [10, 12], [12, 12], [12, 10], [10, 10]]
    """
    s: list[np.ndarray] = []
    segments = [np.asarray(x).reshape(-1, 2) for x in segments]
    idx_list: list[list[int]] = [[] for _ in range(len(segments))]

    for i in range(1, len(segments)):
        idx1, idx2 = _min_index(segments[i - 1], segments[i])
        idx_list[i - 1].append(idx1)
        idx_list[i].append(idx2)

    for k in range(2):
        if k == 0:  # forward: each segment rolled to start at its link into the next
            for i, idx in enumerate(idx_list):
                if len(idx) == 2 and idx[0] > idx[1]:
                    idx = [len(segments[i]) - 1 - x for x in idx]
                    segments[i] = segments[i][::-1, :]
                segments[i] = np.roll(segments[i], -idx[0], axis=0)
                segments[i] = np.concatenate([segments[i], segments[i][:1]])
                if i in {0, len(idx_list) - 1}:
                    s.append(segments[i])
                else:
                    idx = [0, idx[1] - idx[0]]
                    s.append(segments[i][idx[0] : idx[1] + 1])
        else:  # backward: the rest of each middle segment
            for i in range(len(idx_list) - 1, -1, -1):
                if i not in {0, len(idx_list) - 1}:
                    idx = idx_list[i]
                    nidx = abs(idx[1] - idx[0])
                    s.append(segments[i][nidx:])
    return s


def polygons_to_yolo_xy(
    polygons_xy_px: Sequence[np.ndarray], *, multipart: Literal["join", "largest"] = "join"
) -> np.ndarray:
    """The single ``(K, 2)`` pixel polygon a YOLO row holds for an instance's parts (``(0, 2)`` if none).

    ``"join"`` merges the parts like Ultralytics; ``"largest"`` keeps the first part (parts come largest
    first from :mod:`annotator.polygons`).
    """
    if multipart not in ("join", "largest"):
        raise ValueError(f"multipart must be 'join' or 'largest', got {multipart!r}")
    parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons_xy_px]
    parts = [p for p in parts if len(p) >= 3]
    if not parts:
        return np.zeros((0, 2), np.float64)
    if multipart == "largest" or len(parts) == 1:
        return parts[0]
    return np.concatenate(merge_multi_segment(parts))


def instances_to_yolo_lines(
    instances: Sequence[PolygonInstance],
    image_hw: tuple[int, int],
    *,
    multipart: Literal["join", "largest"] = "join",
    with_conf: bool = False,
    decimals: int = 6,
) -> list[str]:
    """One YOLO-seg row per instance: ``"class x1 y1 ... xK yK[ conf]"``, coordinates normalised by ``(W, H)``.

    Args:
        instances: polygonized instances; those without a polygon of >= 3 vertices are skipped.
        image_hw: ``(H, W)`` of the image the pixel coordinates refer to.
        multipart: how an instance with several parts becomes one row (see :func:`polygons_to_yolo_xy`).
        with_conf: append the detector confidence (prediction files only).
        decimals: digits after the decimal point.

    Returns:
        the rows, without trailing newlines.
    """
    h, w = (int(v) for v in image_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_hw must be a positive (H, W), got {tuple(image_hw)}")
    if not (isinstance(decimals, int) and 0 <= decimals <= 12):
        raise ValueError(f"decimals must be an int in [0, 12], got {decimals!r}")
    lines = []
    for inst in instances:
        xy = polygons_to_yolo_xy(inst.polygons_xy_px, multipart=multipart)
        if len(xy) < 3:
            continue
        xy_norm = np.clip(xy / np.array([w, h], dtype=np.float64), 0.0, 1.0)
        values = [f"{v:.{decimals}f}" for v in xy_norm.reshape(-1)]
        if with_conf:
            values.append(f"{float(inst.det_conf):.{decimals}f}")
        lines.append(" ".join([str(int(inst.class_id)), *values]))
    return lines


def yolo_label_relpath(rel_image_path: str) -> str:
    """Label path for an image path relative to the data root: the same path with ``.txt`` as extension.

    Keeping the directories (not only the stem) means ``a/x.jpg`` and ``b/x.jpg`` never share a label file.

    Example:
        >>> yolo_label_relpath("sub/a.jpg"), yolo_label_relpath("b.tar.png")
        ('sub/a.txt', 'b.tar.txt')
    """
    p = PurePosixPath(rel_image_path)
    # a backslash is an ordinary character of a POSIX file name (``a\\b.jpg`` -> ``a\\b.txt``, one file); only
    # where it is the separator (Windows) would it name another folder
    if not rel_image_path or p.is_absolute() or ".." in p.parts or (os.sep == "\\" and "\\" in rel_image_path):
        raise ValueError(
            f"rel_image_path must be a POSIX path relative to the data root (no leading '/', no '..'), "
            f"got {rel_image_path!r}"
        )
    if p.name in ("", "."):
        raise ValueError(f"rel_image_path must name a file, got {rel_image_path!r}")
    return str(p.with_suffix(".txt")) if p.suffix else f"{p}.txt"


def data_yaml_text(
    names: Mapping[int, str],
    *,
    path: str | os.PathLike | None = None,
    train: str | list[str] | None = None,
    val: str | list[str] | None = None,
    test: str | list[str] | None = None,
) -> str:
    """The ``data.yaml`` of a YOLO dataset: ``path``/``train``/``val`` (when given), ``nc`` and ``names``.

    Args:
        names: detector class id -> name; ids must be exactly ``0..n-1``. Names are quoted by the YAML dumper
            where needed (``"yes"``, ``"1"``, ``"a: b"``, non-ASCII are all read back as the same string).
        path, train, val, test: dataset root and splits; Ultralytics requires ``train`` and ``val`` to train
            (``test`` is optional: left out when None).

    Example:
        >>> print(data_yaml_text({0: "person", 1: "no"}, train="images", val="images"), end="")
        train: images
        val: images
        nc: 2
        names:
          0: person
          1: 'no'
    """
    import yaml  # local: only the data.yaml needs it

    by_id = {int(k): str(v) for k, v in names.items()}
    ids = sorted(by_id)
    if not ids or ids != list(range(len(ids))):
        raise ValueError(
            f"names must map class ids 0..n-1 to names with no gaps, got ids {ids[:10]}"
            f"{'...' if len(ids) > 10 else ''}; renumber the classes or fill the missing ids"
        )
    doc: dict = {}
    if path is not None:
        doc["path"] = os.fspath(path)
    if train is not None:
        doc["train"] = train
    if val is not None:
        doc["val"] = val
    if test is not None:
        doc["test"] = test
    doc["nc"] = len(ids)
    doc["names"] = {i: by_id[i] for i in ids}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)


def write_yolo_labels(path: str | os.PathLike, lines: Sequence[str], *, root: str | os.PathLike | None = None) -> bool:
    """Write label rows to ``path`` atomically, one per line; an empty list writes an empty file.

    ``root`` is the output folder: no folder below it may be a link (see :mod:`annotator.io_atomic`).
    Returns False when the file already held these rows (it is then left untouched).
    """
    return atomic_write_text(path, yolo_label_text(lines), root=root)


def yolo_label_text(lines: Sequence[str]) -> str:
    """The bytes of a label file (as text): one row per line, each ``\\n``-terminated; ``""`` for no row.

    Example:
        >>> yolo_label_text(["0 0.1 0.2 0.3 0.4 0.5 0.6"])
        '0 0.1 0.2 0.3 0.4 0.5 0.6\\n'
    """
    bad = [ln for ln in lines if "\n" in ln or "\r" in ln]
    if bad:
        raise ValueError(f"label rows must not contain newlines, got {bad[0][:80]!r}")
    return "".join(f"{ln}\n" for ln in lines)
