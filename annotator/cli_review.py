"""``annotator export | review | eval``: review files from a finished output folder, without running a model.

::

    annotator export OUT --to labelstudio cvat [--dest DIR] [--image-root URL] [--order lowest|uncertain]
    annotator review OUT [--dest DIR] [--per-page N] [--overlays]
    annotator eval OUT --gt GT [--json]

The written frames of finished videos are reviewed as images, with their track ids (see each exporter).
Every export also writes ``review_queue.csv`` (images in review order) beside its files; when ``OUT/eval.json``
exists (``annotator eval``), the images that disagree most with the hand-labelled subset head the queue.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from annotator.review.exports import EXPORTERS



def add_commands(sub) -> None:
    """Add the three sub-commands to ``annotator``'s sub-parsers."""
    from annotator.cli import int_at_least  # here: annotator.cli imports this module when it builds its parser

    e = sub.add_parser("export", help="review files (Label Studio, CVAT) from a finished output folder")
    e.add_argument("output_dir", help="the output_dir of a finished 'annotator annotate' run")
    e.add_argument("--to", nargs="+", choices=EXPORTERS, required=True, help="one or more review tools")
    e.add_argument("--dest", default=None, help="default: OUTPUT_DIR/review/<tool>")
    e.add_argument("--image-root", dest="image_root", default=None,
                   help="Label Studio: URL prefix of the images (default: its local-files storage)")  # fmt: skip
    e.add_argument("--cvat-style", dest="cvat_style", choices=["coco", "xml", "both"], default="both")
    e.add_argument("--cvat-images", dest="cvat_images", choices=["none", "copy"], default="none",
                   help="CVAT: also put the images under DEST/images/ (hard links; for a new task or datumaro)")
    e.add_argument("--order", choices=["lowest", "uncertain"], default="lowest", help="review priority")
    r = sub.add_parser("review", help="a static HTML review page (opens from disk) of a finished output folder")
    r.add_argument("output_dir")
    r.add_argument("--dest", default=None, help="default: OUTPUT_DIR/review/page")
    r.add_argument("--per-page", dest="per_page", type=int_at_least(1), default=200, help="images per page (>= 1)")
    r.add_argument("--overlays", action="store_true", help="also write one overlay PNG per image")
    v = sub.add_parser("eval", help="COCO mask/box AP of a finished run against a hand-labelled subset")
    v.add_argument("output_dir")
    v.add_argument("--gt", required=True, help="COCO .json or a folder of YOLO label .txt files")
    v.add_argument("--json", action="store_true", help="print the report as JSON")


def run_command(ns: argparse.Namespace) -> int:
    """Run ``export`` / ``review`` / ``eval``; one-line errors, exit 2.

    Each holds the output folder's lock (:class:`annotator.lock.OutputLock`) while it reads the ledger and
    writes: while an ``annotate`` run holds the folder, it exits 2 naming the holder, as a second run does."""
    from annotator.errors import AnnotatorError

    try:
        with _locked(ns.output_dir):
            return _dispatch(ns)
    except AnnotatorError as e:
        print(f"annotator: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from annotator.errors import describe_os_error

        print(f"annotator: error: {describe_os_error(e)}", file=sys.stderr)
        return 3


@contextlib.contextmanager
def _locked(output_dir: str):
    """The output folder's lock, when the folder has the run state to lock (else :func:`open_finished` says
    what is wrong, and nothing is created in a folder that is not an output)."""
    from annotator.lock import OutputLock

    out = Path(output_dir).expanduser().absolute()
    if not (out / ".annotator").is_dir():
        yield
        return
    with OutputLock(out, read_only_ok=True):  # an archived, read-only run can still be exported elsewhere
        yield


def _dispatch(ns: argparse.Namespace) -> int:
    from annotator.finished import open_finished

    run = open_finished(ns.output_dir)
    if ns.command == "export":
        return _export(run, ns)
    if ns.command == "review":
        return _review(run, ns)
    return _eval(run, ns)


def _export(run, ns) -> int:
    kw = dict(image_root=ns.image_root, cvat_style=ns.cvat_style, cvat_images=ns.cvat_images, order=ns.order)
    from annotator.review.exports import export_all

    for p in export_all(run, ns.to, dest=ns.dest, **kw):
        print(p)
    return 0


def _review(run, ns) -> int:
    from annotator.review.page import write_review_page

    dest = Path(ns.dest) if ns.dest else run.output_dir / "review" / "page"
    print(write_review_page(run, dest, per_page=ns.per_page, overlays=ns.overlays))
    return 0


def _eval(run, ns) -> int:
    from annotator.evaluate import evaluate
    from annotator.io_atomic import atomic_write_text

    from annotator.review.exports import EVAL_FILENAME

    from annotator.path_guard import check_eval_paths, protect, run_input

    check_eval_paths(run, ns.gt, run.output_dir / EVAL_FILENAME)
    with protect(inputs=[run_input(run), ns.gt], output=run.output_dir):
        report = evaluate(run, ns.gt)
        text = json.dumps(report.to_dict(), indent=2) + "\n"
        atomic_write_text(run.output_dir / EVAL_FILENAME, text, root=run.output_dir)
    print(json.dumps(report.to_dict(), indent=2) if ns.json else report.table())
    return 0
