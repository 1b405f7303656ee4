"""annotator: folders of images -> training-ready segmentation datasets (YOLO boxes -> SAM 2 masks -> polygons).

Public API (importing this package does not import torch; models load on first use)::

    from annotator import auto_annotate, AnnotateConfig, RunSummary
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["auto_annotate", "yolo_bbox2segment", "run", "AnnotateConfig", "RunSummary", "AnnotatorError", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from annotator.api import auto_annotate, run, yolo_bbox2segment
    from annotator.config import AnnotateConfig
    from annotator.errors import AnnotatorError
    from annotator.summary import RunSummary


def __getattr__(name: str) -> Any:
    if name in ("auto_annotate", "run", "yolo_bbox2segment"):
        from annotator import api

        return getattr(api, name)
    if name == "AnnotateConfig":
        from annotator.config import AnnotateConfig

        return AnnotateConfig
    if name == "RunSummary":
        from annotator.summary import RunSummary

        return RunSummary
    if name == "AnnotatorError":
        from annotator.errors import AnnotatorError

        return AnnotatorError
    raise AttributeError(f"module 'annotator' has no attribute {name!r}")
