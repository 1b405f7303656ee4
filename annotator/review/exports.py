"""Review exports by tool name, each with its review queue: what ``annotator export`` and the ``exports``
setting run.

Example:
    >>> export_all(open_finished("out"), ["labelstudio", "cvat"])  # doctest: +SKIP
    [PosixPath('out/review/labelstudio/tasks.json'), ...]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from annotator.finished import FinishedRun

EXPORTERS = ("labelstudio", "cvat")
#: written into the output folder by ``annotator eval``; its disagreeing images head every review queue
EVAL_FILENAME = "eval.json"


def disagreeing_images(run: FinishedRun) -> list[str]:
    """Images that disagree with the hand-labelled subset (``annotator eval``), worst first; [] without one."""
    path = run.output_dir / EVAL_FILENAME
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8")).get("disagreements", [])
    except ValueError:
        return []
    return [r["rel_path"] for r in rows if r.get("f1", 1.0) < 1.0]


def export_all(
    run: FinishedRun, tools: Sequence[str], *, dest: Path | None = None, image_root: str | None = None,
    cvat_style: str = "both", cvat_images: str = "none", order: str = "lowest",
) -> list[Path]:  # fmt: skip
    """Write the exports of ``tools`` (+ each one's review queue) into ``dest/<tool>`` (one tool: ``dest``;
    default ``output_dir/review/<tool>``); returns the written paths."""
    from annotator.path_guard import check_review_dest, protect, run_input
    from annotator.review.queue import review_order, write_review_queue

    wheres = [_where(run, tool, tools, dest) for tool in tools]
    for where in wheres:
        check_review_dest(run, where)
    with protect(inputs=[run_input(run)], output=[*wheres, run.output_dir]):
        return _export_all(run, tools, wheres, image_root, cvat_style, cvat_images, order)


def _where(run: FinishedRun, tool: str, tools: Sequence[str], dest: Path | None) -> Path:
    where = Path(dest) / tool if dest is not None and len(tools) > 1 else Path(dest or run.output_dir / "review" / tool)
    from annotator.path_guard import absolute_path

    return absolute_path(where)  # 'link/..' as the OS reads it


def _export_all(run, tools, wheres, image_root, cvat_style, cvat_images, order) -> list[Path]:
    from annotator.review.queue import review_order, write_review_queue

    queue = None  # the same for every tool: computed once, after the first export
    written = []
    for tool, where in zip(tools, wheres):
        if tool == "labelstudio":
            from annotator.review.labelstudio import export_labelstudio

            written += export_labelstudio(run, where, image_root=image_root)
        elif tool == "cvat":
            from annotator.review.cvat import export_cvat

            written += export_cvat(run, where, style=cvat_style, images=cvat_images)
        else:
            raise ValueError(f"unknown review tool {tool!r}; choose from {', '.join(EXPORTERS)}")
        if queue is None:
            queue = review_order(run, order=order, first=disagreeing_images(run))
        written.append(write_review_queue(run, where, rows=queue))
    return written
