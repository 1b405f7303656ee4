"""Command line of the benchmark: ``annotator bench ...`` and ``python -m benchmarks ...`` (the same).

``annotator`` imports this package only when the ``bench`` sub-command is chosen (it forwards its arguments to
:func:`main`), so an ``annotator annotate`` run never loads the benchmark code.

Example:
    >>> ns = build_parser().parse_args(["--images", "2", "--image-size", "96x128", "--boxes", "gt"])
    >>> ns.images, ns.image_size, ns.boxes
    (2, (96, 128), 'gt')
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.ground_truth import parse_hw
from benchmarks.versus_ultralytics import format_report, run_bench

EXIT_OK, EXIT_UNUSABLE = 0, 2
DESCRIPTION = "images/s of ours vs Ultralytics' auto_annotate on the same images and models"


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``annotator bench`` arguments to ``parser``."""
    parser.add_argument(
        "data", nargs="?", default=None, help="flat folder of images (default: generate synthetic ones)"
    )
    g = parser.add_argument_group("synthetic images (when DATA is not given)")
    g.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    g.add_argument("--image-size", dest="image_size", type=parse_hw, default=(480, 640), help="HxW (default 480x640)")
    g.add_argument("--objects", type=int, default=5, help="shapes per image (default 5)")
    g.add_argument("--seed", type=int, default=0)
    m = parser.add_argument_group("models and settings (the same for both pipelines)")
    m.add_argument("--det-model", dest="det_model", default="yolo11n.pt", help="YOLO detector (default yolo11n.pt)")
    m.add_argument("--sam-model", dest="sam_model", default="sam2_t.pt", help="SAM / SAM 2 weights (default sam2_t.pt)")
    m.add_argument("--weights-dir", dest="weights_dir", type=Path, default=None, help="folder with weight files")
    m.add_argument("--device", default="cpu", help="cpu (default), 0, cuda:0 ...")
    m.add_argument("--imgsz", type=int, default=640, help="detector input size (default 640)")
    m.add_argument("--conf", type=float, default=0.25, help="detector confidence (default 0.25)")
    m.add_argument(
        "--boxes",
        choices=["det", "gt"],
        default="det",
        help="det: the detector's boxes (default); gt: the synthetic ground-truth boxes for both pipelines",
    )
    m.add_argument(
        "--masks",
        choices=["sam", "gt"],
        default="sam",
        help="sam: SAM's masks (default); gt: smoothed ground-truth masks replace SAM's logits in both pipelines "
        "after its decoder ran (realistic polygon/write costs with random-weight SAM)",
    )
    o = parser.add_argument_group("our pipeline")
    o.add_argument("--batch-size", dest="batch_size", type=int, default=4, help="images per model batch (default 4)")
    o.add_argument("--compat", choices=["none", "ultralytics"], default="none", help="our polygon mode (default none)")
    o.add_argument(
        "--compile", action="store_true", help="torch.compile our SAM image encoder (compile time in warm-up)"
    )
    o.add_argument(
        "--cpu-workers",
        dest="cpu_workers",
        type=int,
        default=0,
        help="CPU: images our SAM encoder runs in parallel worker threads (default: one per core, at most 4)",
    )
    o.add_argument("--fp32", action="store_true", help="on GPU, run ours in fp32 like Ultralytics (default: bf16/fp16)")
    r = parser.add_argument_group("run")
    r.add_argument("--repeats", type=int, default=3, help="timed repetitions per pipeline, alternating (default 3)")
    r.add_argument("--warmup", type=int, default=1, help="warm-up runs per pipeline before timing (default 1)")
    r.add_argument("--which", choices=["both", "annotator", "ultralytics"], default="both")
    r.add_argument(
        "--threads", type=int, default=0, help="torch threads for our models (default: as Ultralytics, cpu_count-1)"
    )
    r.add_argument(
        "--ultralytics-threads",
        dest="ultralytics_threads",
        type=int,
        default=0,
        help="torch threads for Ultralytics (default: what its select_device sets, min(8, cpu_count-1))",
    )
    r.add_argument("--interop-threads", dest="interop_threads", type=int, default=0, help="torch interop threads")
    r.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    r.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _check(ns: argparse.Namespace) -> None:
    if ns.images < 1 or ns.repeats < 1 or ns.warmup < 0 or ns.batch_size < 1 or ns.objects < 0:
        raise ValueError("--images, --repeats and --batch-size must be >= 1; --warmup and --objects >= 0")
    if ns.imgsz <= 0 or ns.imgsz % 32:
        raise ValueError(f"--imgsz must be a positive multiple of 32, got {ns.imgsz}")


def cmd_bench(ns: argparse.Namespace) -> int:
    """Run ``annotator bench``; print the table (or JSON with ``--json``). Exit 0, or 2 on a bad setup."""
    from annotator.errors import ConfigError, ModelLoadError, WeightsNotFoundError

    log = (lambda s: None) if ns.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        _check(ns)
        rep = run_bench(ns, log)
    except (ConfigError, WeightsNotFoundError, ModelLoadError, ValueError) as e:
        print(f"annotator bench: error: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    if ns.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print(format_report(rep))
    return EXIT_OK


def build_parser(prog: str = "annotator bench") -> argparse.ArgumentParser:
    """The bench's argument parser (a bad argument: one line on stderr, exit 2, as ``annotator``'s own)."""
    from annotator.cli import _OneLineParser

    parser = _OneLineParser(prog=prog, description=DESCRIPTION)
    add_bench_args(parser)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "annotator bench") -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the bench; the exit code."""
    return cmd_bench(build_parser(prog).parse_args(argv))
