"""One validation layer for every file a user hands in: each is parsed once into typed records with bounds.

=================  =====================================================  ==========================
file               reader                                                 records
=================  =====================================================  ==========================
points JSON        :func:`~annotator.validation.points.load_points`        ``PointsFile``
COCO prompts       :func:`~annotator.validation.coco.load_coco_prompts`    ``CocoPrompts``
YOLO label file    :func:`~annotator.validation.yolo.load_yolo_file`       ``list[YoloRow]``
COCO ground truth  :func:`~annotator.validation.coco.load_ground_truth`    ``GroundTruth``
config / data.yaml :func:`~annotator.validation.yaml_safe.load_yaml_file`  plain dict (then pydantic)
=================  =====================================================  ==========================

Underneath: :mod:`~annotator.validation.files` (regular files only, refused unopened otherwise; size
limits), :mod:`~annotator.validation.json_safe` (nesting depth, no NaN/Infinity, no huge integers, no
duplicate keys), :mod:`~annotator.validation.yaml_safe` (no anchors or aliases). Every refusal is one
:class:`~annotator.errors.InputFileError` line ``file: place: expected X, found Y`` (exit 2), raised by
:func:`check_run_inputs` before any model loads or anything is written.
"""

from __future__ import annotations

from annotator.errors import InputFileError

__all__ = ["InputFileError", "check_run_inputs"]


def check_run_inputs(cfg) -> None:
    """Validate every user file an ``annotate`` run reads (prompt labels / points) before the run starts.

    The whole file or labels tree is checked (a YOLO tree: every ``*.txt`` file under it), so a malformed row
    anywhere stops the run before a model is loaded or an output written.
    """
    if cfg.prompts == "points" and cfg.prompt_points is not None:
        from annotator.validation.points import load_points

        load_points(cfg.prompt_points)
    elif cfg.prompts == "boxes" and cfg.prompt_labels is not None:
        from annotator.prompts import LabelBoxSource

        data_root = cfg.data if cfg.data.is_dir() else cfg.data.parent
        LabelBoxSource(cfg.prompt_labels, data_root, check_all=True)
