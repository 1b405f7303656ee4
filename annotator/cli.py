"""The ``annotator`` command.

    annotator annotate DATA [--det-model M] [--sam-model M] [--conf C] [--iou I] [--imgsz N] [--max-det N]
                            [--classes 0 2 ...] [--device D] [--output-dir DIR] [--format yolo|coco|both]
                            [--config configs/NAME.yaml] [--json] [...]

Settings come from, lowest to highest priority: defaults, ``--config`` file, command-line flags.

Exit codes (for schedulers):
    0    every input went through (annotated or empty);
    1    some inputs failed (images and videos together: more than ``--max-failures``, default 0); the outputs
         of the others are written;
    2    the run was unusable: bad argument or config, missing or unsafe weights, no images, output folder in
         use (one line on stderr);
    3    the output could not be written (disk full, read-only, permission, a link inside the output folder):
         one line naming the path and the cause; what was written is complete, the same command resumes;
    130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: stopped after the image in flight, the same command
         resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from annotator import interrupt
from annotator.interrupt import Interrupted

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_UNUSABLE = 2
EXIT_OUTPUT_ERROR = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class _IntsThenData(argparse.Action):
    """``--classes 0 2 DATA``: take the leading integers (or ``0,2``) as class ids; a trailing non-integer is
    DATA, not an error, so the flag can come before the positional argument as users type it."""

    def __call__(self, parser, namespace, values, option_string=None):
        ids: list[int] = []
        rest: list[str] = []
        for v in values:
            parts = [x for x in str(v).split(",") if x.strip()]
            if not rest and parts and all(_is_int(x) for x in parts):
                ids += [int(x) for x in parts]
            else:
                rest.append(v)
        if not ids:
            parser.error(f"{option_string} needs at least one integer class id, e.g. {option_string} 0 2")
        if len(rest) > 1 or (rest and getattr(namespace, "data", None) is not None):
            parser.error(f"{option_string} takes integer class ids, got {' '.join(rest)!r}")
        setattr(namespace, self.dest, ids)
        if rest:
            namespace.data = rest[0]


def _is_int(x: str) -> bool:
    try:
        int(x)
        return True
    except ValueError:
        return False


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` refused in one line, exit 2)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {text!r}")
    return v


def int_at_least(low: int):
    """argparse type: an integer ``>= low`` (e.g. ``--per-page 0``, ``--max-failures -1`` refused, exit 2)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, found {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, found {v}")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (what is wrong + where to look), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_UNUSABLE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_annotate_args(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # only flags actually given override the config file
    p.add_argument("data", nargs="?", default=S, help="folder of images (recursive), an image, or a .txt list")
    p.add_argument("--config", default=None, help="YAML file of settings (see configs/); flags override it")
    m = p.add_argument_group("models")
    m.add_argument("--det-model", dest="det_model", default=S, help="YOLO detector name or path (default yolo11x.pt)")
    m.add_argument("--sam-model", dest="sam_model", default=S, help="SAM/SAM 2 name or path (default sam2_b.pt)")
    m.add_argument("--weights-dir", dest="weights_dir", default=S, help="folder with weight files ($ANNOTATOR_WEIGHTS_DIR)")
    m.add_argument("--device", default=S, help="'' auto, cpu, 0, cuda:1 ...")
    m.add_argument(
        "--trust-weights", dest="trust_weights", action="store_true", default=S,
        help="load weight files that pickle objects outside the safe allow-list (runs their code)",
    )
    d = p.add_argument_group("detector")
    d.add_argument("--conf", type=finite_float, default=S, help="confidence threshold in [0, 1] (default 0.25)")
    d.add_argument("--iou", type=finite_float, default=S, help="NMS IoU threshold in [0, 1] (default 0.45)")
    d.add_argument("--imgsz", default=S, help="input size N or H,W (default 640; rounded up to a multiple of 32)")
    d.add_argument("--max-det", dest="max_det", type=int, default=S, help="max detections per image (default 300)")
    d.add_argument(
        "--classes", nargs="+", action=_IntsThenData, default=S, help="keep only these class ids, e.g. --classes 0 2"
    )
    d.add_argument("--sam-min-score", dest="sam_min_score", type=finite_float, default=S, help="drop masks with SAM score <= this (0.25)")
    pr = p.add_argument_group("prompts")
    pr.add_argument("--prompts", choices=["detector", "boxes", "points", "everything"], default=S,
                    help="detector (default), existing box labels, a file of point prompts, or everything (a point "
                    "grid, no detector)")  # fmt: skip
    pr.add_argument("--prompt-labels", dest="prompt_labels", default=S,
                    help="prompts boxes: YOLO labels folder or COCO .json (default: labels/ beside data)")  # fmt: skip
    pr.add_argument("--prompt-points", dest="prompt_points", default=S,
                    help="prompts points: JSON file of points per image and object (README 'Prompt sources')")  # fmt: skip
    pr.add_argument("--points-per-side", dest="everything.points_per_side", type=int, default=S,
                    help="prompts everything: n x n point grid (default 32; everything: section for the rest)")  # fmt: skip
    pr.add_argument("--everything-class", dest="everything.class_name", default=S,
                    help="prompts everything: the one class name (default object)")  # fmt: skip
    pr.add_argument("--detector-masks", dest="detector_masks", choices=["ignore", "prompt", "keep_better"], default=S,
                    help="a -seg detector's masks: ignore (default), SAM mask prompt, or keep_better")  # fmt: skip
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", dest="output_dir", default=S, help="default: labels/ beside images/, else <data>_auto_annotate_labels")
    o.add_argument("--format", choices=["yolo", "coco", "both"], default=S, help="default yolo")
    o.add_argument("--coco-segmentation", dest="coco_segmentation", choices=["polygon", "rle"], default=S)
    o.add_argument("--save-conf", dest="save_conf", action="store_true", default=S, help="also write scores.csv (conf per label row)")
    o.add_argument("--multipart", choices=["join", "largest"], default=S, help="several-part masks in YOLO rows")
    o.add_argument("--simplify-tolerance-px", dest="simplify_tolerance_px", type=finite_float, default=S)
    o.add_argument("--min-area-px", dest="min_area_px", type=finite_float, default=S)
    o.add_argument("--export", dest="exports", nargs="+", choices=["labelstudio", "cvat", "page"], default=S,
                   help="also write review files into OUTPUT_DIR/review/ (annotator export / review do it later)")
    o.add_argument("--review-image-root", dest="review_image_root", default=S, help="Label Studio: URL prefix of the images")
    o.add_argument("--val-fraction", dest="split.val", type=finite_float, default=S,
                   help="fraction of the images hashed into data.yaml's val split (default 0.1; 0: val = train)")  # fmt: skip
    o.add_argument("--test-fraction", dest="split.test", type=finite_float, default=S,
                   help="fraction hashed into a test split (default 0)")  # fmt: skip
    o.add_argument("--compat", choices=["none", "ultralytics"], default=S, help="ultralytics: polygons exactly as masks.xyn")
    r = p.add_argument_group("run")
    r.add_argument("--engine", choices=["local", "ray"], default=S, help="local (default) or ray")
    r.add_argument("--address", dest="ray.address", default=S, help="Ray cluster to join: auto | head-host:6379 (engine ray; token auth: docs/cluster.md)")
    r.add_argument("--batch-size", dest="batch_size", type=int, default=S)
    r.add_argument("--workers", type=int, default=S, help="CPU threads decoding/letterboxing and polygonizing (default: cores)")
    r.add_argument("--compile", action="store_true", default=S, help="torch.compile the SAM image encoder (long GPU runs)")
    r.add_argument("--max-pixels", dest="max_pixels", type=int, default=S)
    r.add_argument("--torch-threads", dest="torch_threads", type=int, default=S, help="CPU threads for the models (all cores)")
    r.add_argument("--max-failures", dest="max_failures", type=int_at_least(0), default=0, help="failed images + videos tolerated before exit 1")
    v = p.add_argument_group("videos (.mp4 .mov .avi .mkv .webm in data)")
    v.add_argument("--frame-stride", dest="frame_stride", type=int, default=S, help="label every n-th source frame (default 1)")
    v.add_argument("--keyframe-interval", dest="keyframe_interval", type=int, default=S,
                   help="detector on every n-th labelled frame (default 5)")
    v.add_argument("--track-match-iou", dest="track_match_iou", type=finite_float, default=S,
                   help="mask IoU for a keyframe detection to refresh a track (default 0.5)")
    v.add_argument("--track-max-missing", dest="track_max_missing", type=int, default=S,
                   help="keyframes in a row without a mask before a track ends (default 3)")
    v.add_argument("--track-max-unconfirmed", dest="track_max_unconfirmed", type=int, default=S,
                   help="keyframes in a row with a mask no detection matches before a track ends (default: never)")
    j = p.add_argument_group("scheduled jobs")
    j.add_argument("--hash-inputs", dest="hash_inputs", action="store_true", default=S, help="detect changes by content SHA-256")
    j.add_argument("--keep-deleted", dest="keep_deleted", action="store_true", default=S, help="keep labels of deleted inputs")
    j.add_argument(
        "--weights-sha256", dest="weights_sha256", nargs="+", default=S, metavar="NAME=HEX",
        help="pin weight files, e.g. --weights-sha256 yolo11x.pt=ab12... sam2_b.pt=cd34...",
    )
    r.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from annotator import __version__

    parser = _OneLineParser(prog="annotator", description="YOLO boxes -> SAM 2 masks -> YOLO-seg labels / COCO JSON")
    parser.add_argument("--version", action="version", version=f"annotator {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_OneLineParser)
    ann = sub.add_parser("annotate", help="annotate a folder of images")
    _add_annotate_args(ann)
    # listed for --help only: main() hands "annotator bench ..." to the benchmarks package before parsing, so that
    # the annotate path never imports it
    sub.add_parser(
        "bench", add_help=False, help="images/s of ours vs Ultralytics' auto_annotate on the same images and models"
    )
    from annotator.cli_review import add_commands

    add_commands(sub)  # export, review, eval
    return parser


def _settings(ns: argparse.Namespace) -> dict[str, Any]:
    from annotator.config import load_config_file
    from annotator.errors import ConfigError

    settings: dict[str, Any] = load_config_file(ns.config) if ns.config else {}
    cli_only = {"config", "json", "quiet", "max_failures", "command"}
    for name, value in vars(ns).items():
        if name in cli_only:
            continue
        section, dot, key = name.partition(".")  # "section.key" flags (--address ...) go into that section
        if dot:
            settings[section] = {**(settings.get(section) or {}), key: value}
        else:
            settings[name] = value
    if isinstance(settings.get("weights_sha256"), list):
        pins = {}
        for pair in settings["weights_sha256"]:
            name, sep, digest = pair.partition("=")
            if not sep or not name or not digest:
                raise ConfigError(f"--weights-sha256 takes NAME=HEX pairs, got {pair!r}")
            pins[name] = digest
        settings["weights_sha256"] = pins
    return settings


def cmd_annotate(ns: argparse.Namespace) -> int:
    from annotator.api import run
    from annotator.config import make_config
    from annotator.errors import AnnotatorError, OutputError, describe_os_error

    try:
        settings = _settings(ns)
        if "data" not in settings:
            raise AnnotatorError("no input: pass DATA (a folder of images) or set 'data' in the --config file")
        settings.setdefault("progress", not ns.quiet and sys.stderr.isatty())
        with warnings.catch_warnings(record=True) as caught:  # e.g. imgsz rounded up: one line each
            warnings.simplefilter("always")
            cfg = make_config(**settings)
        for w in caught:
            print(f"annotator: warning: {w.message}", file=sys.stderr)
        with _stop_on_signals():
            summary = run(cfg)
            interrupt.raise_if_requested()  # a signal after the last result, its raise dropped: still say so
    except Interrupted as e:
        print(
            f"annotator: interrupted by {e.signame}: stopped after the image in flight; every finished image is "
            f"written and recorded: run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_SIGTERM if e.signame == "SIGTERM" else EXIT_SIGINT
    except OutputError as e:
        print(f"annotator: error: {e}; fix that and run the same command to resume", file=sys.stderr)
        return EXIT_OUTPUT_ERROR
    except AnnotatorError as e:
        print(f"annotator: error: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    except OSError as e:  # an I/O fault outside our writers (e.g. the output folder's own mkdir)
        print(f"annotator: error: {describe_os_error(e)}; fix that and run the same command to resume", file=sys.stderr)
        return EXIT_OUTPUT_ERROR
    if ns.json:
        print(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        _print_summary(summary)
    print(summary.one_line(), file=sys.stderr if ns.json else sys.stdout)
    return EXIT_SOME_FAILED if summary.failed + summary.videos_failed > ns.max_failures else EXIT_OK


@contextlib.contextmanager
def _stop_on_signals():
    """Turn SIGINT and SIGTERM into :class:`Interrupted` in the main thread while a run is active.

    The engines stop handing out work when it propagates; files are written atomically and recorded one by
    one, so whatever finished is kept and the next run resumes from there. A second signal while stopping
    is ignored (the first one's stop is already under way).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if interrupt.requested():
            return
        name = signal.Signals(signum).name
        interrupt.request_stop(name)  # kept: the raise below is dropped if it lands in a finaliser
        raise Interrupted(name)

    def unraisable(info, _default=sys.unraisablehook):
        if info.exc_type is not Interrupted:  # ours is recorded, not lost: no "Exception ignored" traceback
            _default(info)

    old = interrupt.install_handler(handler)  # kept there: the Ray engine puts it back after ray.init
    old_unraisable, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    except KeyboardInterrupt:  # raised by a library's own SIGINT handling (e.g. Ray's)
        raise Interrupted(interrupt.requested() or "SIGINT") from None
    finally:
        interrupt.clear()
        sys.unraisablehook = old_unraisable
        interrupt.restore_handlers(old)


def _print_summary(s) -> None:
    print(f"output: {s.output_dir}")
    if s.data_yaml:
        print(f"  YOLO labels: {s.labels_dir}  (data.yaml: {s.data_yaml})")
        splits = getattr(s, "splits", None)
        print("  splits:      " + (", ".join(f"{k} {n}" for k, n in splits.items()) if splits else "none (val = train)"))
    if s.coco_json:
        print(f"  COCO JSON:   {s.coco_json}")
    for p in s.exports:
        print(f"  review:      {p}")
    if s.instances_per_class:
        per = ", ".join(f"{k}: {v}" for k, v in sorted(s.instances_per_class.items()))
        print(f"instances per class: {per}")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in s.seconds_per_stage.items())
    print(f"seconds per stage: {stages}")
    for f in s.failures[:20]:
        print(f"  failed: {f['path']}: {f['status']}: {f['reason']}")
    if len(s.failures) > 20:
        print(f"  ... and {len(s.failures) - 20} more failures (see --json)")
    for p in s.label_collisions:
        print(f"  label collision (no YOLO label written, COCO kept): {p}")
    for r in s.refused:
        print(f"  refused: {r['path']}: {r['reason']}")
    for v in getattr(s, "videos", []):
        print(f"  video: {v['rel_path']}: {v['status']}, {v['frames_written']} frames, {v['tracks']} tracks"
              + (f": {v['reason']}" if v["reason"] else ""))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        if args[:1] == ["bench"]:
            from benchmarks.bench_cli import main as bench_main  # only now: not part of an annotate run

            return bench_main(args[1:])
        parser = build_parser()
        ns = parser.parse_args(args)
        if ns.command == "annotate":
            return cmd_annotate(ns)
        if ns.command in ("export", "review", "eval"):
            from annotator.cli_review import run_command

            return run_command(ns)
        parser.print_help()
        return EXIT_UNUSABLE
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C before or after a run (imports, model loading)
        print("annotator: interrupted: nothing half-written; run the same command to resume", file=sys.stderr)
        return EXIT_SIGINT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
