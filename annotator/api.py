"""``auto_annotate``: the drop-in replacement for ``ultralytics.data.annotator.auto_annotate``.

Example:
    >>> from annotator import auto_annotate
    >>> summary = auto_annotate("datasets/street/images", det_model="yolo11x.pt", sam_model="sam2_b.pt",
    ...                         format="both")  # doctest: +SKIP
    >>> summary.labels_dir, summary.coco_json, summary.annotated  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable

from annotator.config import AnnotateConfig, labels_beside, make_config
from annotator.errors import ConfigError
from annotator.interrupt import raise_if_requested
from annotator.models import resolve_models
from annotator.summary import RunSummary


def auto_annotate(
    data: str | Path,
    det_model: str | Path = "yolo11x.pt",
    sam_model: str | Path = "sam2_b.pt",
    device: str | int = "",
    conf: float = 0.25,
    iou: float = 0.45,
    imgsz: int | list[int] | tuple[int, int] = 640,
    max_det: int = 300,
    classes: list[int] | None = None,
    output_dir: str | Path | None = None,
    *,
    format: str = "yolo",
    **options: Any,
) -> RunSummary:
    """Detect objects with YOLO, segment each box with SAM / SAM 2, write YOLO-seg labels and/or COCO JSON.

    ``prompts="everything"`` segments without a detector (SAM's automatic masks from a point grid, one class;
    settings: ``everything={"points_per_side": 32, ...}``, see :class:`annotator.everything.EverythingSettings`).

    The leading parameters are those of Ultralytics' ``auto_annotate``, in the same order and meaning.

    Args:
        data: folder of images (searched recursively; sub-folders are mirrored in the output), one image,
            or a ``.txt`` file listing images.
        det_model: YOLO detector name or path, ``str`` or ``Path`` (``-seg`` models are used as detectors).
        sam_model: ``sam_b/l/h``, ``mobile_sam``, ``sam2_t/s/b/l``, ``sam2.1_t/s/b/l`` (``.pt``), name or path.
        device: ``""`` (auto), ``"cpu"``, ``"0"`` or ``0``, ``"cuda:1"``, a ``torch.device``...
        conf, iou, imgsz, max_det, classes: detector settings, as in Ultralytics (``imgsz``: ``640`` or
            ``[h, w]``; a size that is not a multiple of 32 is rounded up with a warning).
        output_dir: default: ``labels/`` beside an ``images/`` folder (labels go straight in it), else
            ``<data>_auto_annotate_labels``, made a dataset root: ``labels/``, ``images/`` (links), ``data.yaml``.
        format: ``"yolo"``, ``"coco"`` or ``"both"``.
        **options: any other field of :class:`annotator.config.AnnotateConfig` (``save_conf``, ``multipart``, ``split``,
            ``coco_segmentation``, ``simplify_tolerance_px``, ``weights_dir``, ``engine``, ``batch_size``...).

    Returns:
        :class:`~annotator.summary.RunSummary` with counts, ``labels_dir``, ``data_yaml``, ``coco_json`` and
        seconds per stage.

    Raises:
        ConfigError: a setting is invalid (one line saying what is allowed).
        WeightsNotFoundError: a weight file is missing and can not be fetched (before any work).
    """
    cfg = make_config(
        data=data,
        det_model=det_model,
        sam_model=sam_model,
        device=device,
        conf=conf,
        iou=iou,
        imgsz=imgsz,
        max_det=max_det,
        classes=classes,
        output_dir=output_dir,
        format=format,
        **options,
    )
    return run(cfg)


def yolo_bbox2segment(
    im_dir: str | Path, save_dir: str | Path | None = None, sam_model: str | Path = "sam_b.pt",
    device: int | str | None = None, **options: Any,
) -> RunSummary:  # fmt: skip
    """Existing box labels -> SAM masks: the drop-in for ``ultralytics.data.converter.yolo_bbox2segment``.

    Same parameters, same places: labels are read as Ultralytics pairs them (the last ``images`` part of
    ``im_dir`` becomes ``labels``: ``root/images/train`` -> ``root/labels/train``; without an ``images`` part,
    beside each image: ``photos/a.jpg`` -> ``photos/a.txt``; or ``prompt_labels=``: a YOLO
    folder or a COCO .json with boxes) and the label files go straight into ``save_dir`` (default:
    ``labels-segment`` beside ``im_dir``). But: rows that are already polygons are kept (per row, where
    Ultralytics returns without doing anything as soon as one label has segments), sub-folders are mirrored,
    classes and names carry over (``save_dir/data.yaml``, training on the listed images), and a re-run only
    does what changed (``save_dir/.annotator/``).

    Example:
        >>> yolo_bbox2segment("datasets/street/images/train", sam_model="sam2_b.pt")  # doctest: +SKIP
        >>> # reads datasets/street/labels/train, writes datasets/street/images/labels-segment/*.txt
    """
    if save_dir is None or save_dir == "":
        save_dir = Path(im_dir).parent / "labels-segment"  # Ultralytics' default, whatever im_dir is called
    options.setdefault("flat_labels", True)
    if options.get("prompt_labels") is None and labels_beside(Path(im_dir).absolute()) is None:
        options["prompt_labels"] = im_dir  # no 'images' part: Ultralytics reads each label beside its image
    cfg = make_config(data=im_dir, prompts="boxes", sam_model=sam_model, output_dir=save_dir, device=device,
                      **options)  # fmt: skip
    return run(cfg)


def run(cfg: AnnotateConfig, *, on_result: Callable | None = None, engine_options: dict | None = None) -> RunSummary:
    """Run a validated config.

    Order: validate the prompt files the run reads (:mod:`annotator.validation`), resolve and verify the weight files (one-line error before any work), take the output folder's
    lock, clean temp files a killed run left, scan the inputs, plan the work against the ledger (only new,
    modified or re-configured inputs are processed), let the engine (:data:`pipelines.ENGINES`) compute the
    results, write them in input order on a writer thread, write ``run_report.json``.

    Args:
        cfg: validated settings (:func:`annotator.config.make_config`).
        on_result: called with each image's result after it is written, in input order.
        engine_options: hooks for tests and benchmarks, passed to the engine (``stages`` for the local
            engine, ``stages_factory`` for Ray). Engine *settings* belong in ``cfg.ray``.
    """
    from annotator.io_atomic import ensure_real_dir
    from annotator.ledger import Ledger
    from annotator.lock import OutputLock
    from annotator.output import remove_stale_temp_files
    from annotator.path_guard import check_annotate_paths, protect
    from annotator.sources import scan_sources
    from annotator.workplan import hash_weights, plan_work
    from pipelines import get_engine

    from annotator.validation import check_run_inputs

    t0 = time.perf_counter()
    check_annotate_paths(cfg)  # again: a config built without make_config, or a folder that changed since
    check_run_inputs(cfg)  # every prompt file validated: one InputFileError line before any model or output
    prompt_file = cfg.prompt_points if cfg.prompts == "points" else cfg.prompt_labels  # hashed as the detector
    stand_in = cfg.everything.digest() if cfg.prompts == "everything" else None  # no detector file
    models = resolve_models(cfg.det_model, cfg.sam_model, weights_dir=cfg.weights_dir, prompt_labels=prompt_file,
                            det_stand_in=stand_in)  # fmt: skip
    weight_hashes = hash_weights(models, cfg.weights_sha256)
    try:
        scan = scan_sources(cfg.data)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    engine = get_engine(cfg.engine)
    inputs = [cfg.data, cfg.prompt_labels, cfg.prompt_points, models.det_path, models.sam_path]
    if not cfg.data.is_dir():  # one image or a .txt list: the listed files are the input
        inputs += [it.path for it in scan.items] + [v.path for v in scan.videos]
    with protect(inputs=inputs, output=cfg.output_dir), contextlib.ExitStack() as stack:
        ensure_real_dir(cfg.output_dir)
        stack.enter_context(OutputLock(cfg.output_dir))
        remove_stale_temp_files(Path(cfg.output_dir), skip=[cfg.data if cfg.data.is_dir() else cfg.data.parent])
        ledger = Ledger(Path(cfg.output_dir))
        try:
            plan = plan_work(cfg, models, scan, ledger, weight_hashes)
            engine_options = dict(engine_options or {})
            video_hooks = {k: engine_options.pop(k) for k in _VIDEO_HOOKS if k in engine_options}
            videos = _label_videos(cfg, models, scan, plan, video_hooks) if scan.videos else None
            if plan.items:
                summary = _process(cfg, engine(cfg, models, plan, **engine_options), plan, on_result)
            else:
                summary = _nothing_to_process(cfg, models, plan)
            if videos is not None:
                summary.videos = [v.to_dict() for v in videos[0]]
                for v in videos[0]:
                    summary.add_dropped(v.dropped)
                summary.videos_unchanged, summary.videos_removed = videos[1].unchanged, len(videos[1].removed)
            summary.unchanged = plan.unchanged
            summary.removed = 0 if cfg.keep_deleted else len(plan.deleted)
            summary.elapsed_s = time.perf_counter() - t0
            _write_report(cfg, models, plan, summary)
            if cfg.exports:
                summary.exports = _review_exports(cfg)
        finally:
            ledger.close()
    return summary


#: ``engine_options`` keys for the video path (tests, benchmarks): a tracker factory ``(cfg, models) -> VideoTracker``
#: (its ``tracker_name`` attribute goes into the videos' fingerprint) and a frame detector ``(frames) -> Detections``
_VIDEO_HOOKS = ("video_tracker_factory", "video_detector")


def _label_videos(cfg: AnnotateConfig, models, scan, plan, hooks: dict):
    """Label the due videos (before the images; the writer adds their frames to data.yaml / COCO at its close).

    Returns ``(results, video plan)``. Settings that can not label videos give each due video status
    ``unsupported`` with a one-line reason (:func:`pipelines.local_video.local_video_engine`); the images go on.
    """
    import shutil

    from annotator.video.jobs import plan_videos
    from annotator.video.layout import VideoLayout
    from pipelines import VIDEO_ENGINES

    factory = hooks.get("video_tracker_factory")
    tracker_name = "sam2" if factory is None else str(getattr(factory, "tracker_name", "custom"))
    from annotator.path_guard import check_write

    staging = VideoLayout.of(cfg).staging_root
    if staging.exists():
        check_write(staging, "remove_tree")
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's half-labelled video
    vplan = plan_videos(cfg, scan.videos, plan.ledger, plan.model_fp, plan.output_fp, tracker_name)
    plan.videos = [v.rel_path for v in scan.videos]
    results = []
    for result in VIDEO_ENGINES[cfg.engine](cfg, models, vplan.due, plan.ledger, tracker_factory=factory,
                                            detector=hooks.get("video_detector")):  # fmt: skip
        results.append(result)
        raise_if_requested()
    return sorted(results, key=lambda r: r.rel_path), vplan


def _process(cfg: AnnotateConfig, engine_run, plan, on_result: Callable | None) -> RunSummary:
    """Consume the engine's results in input order and write them; the writer is closed only when every
    result is written (data.yaml, COCO), and aborted otherwise (interrupt, write error, engine error)."""
    from annotator.output import open_writer
    from annotator.result_sink import ResultSink

    summary = _summary(cfg, plan)
    writer = open_writer(cfg, engine_run.names, plan)
    summary.label_collisions = sorted(writer.collisions)
    bar = _progress(len(plan.items)) if cfg.progress else None
    sink = ResultSink(writer, summary, engine_run.names, on_result=on_result, bar=bar)
    t_start = time.perf_counter()
    ok = False
    try:
        for result in engine_run.results:
            raise_if_requested()  # a signal whose raise was dropped (see annotator/interrupt.py) stops here
            sink.put(result)
        raise_if_requested()
        sink.finish()
        writer.close()
        ok = True
    finally:
        if not ok:
            sink.stop()  # the image being written completes; queued ones are left to the next run
            engine_run.results.close()  # the engine stops handing out work and joins its threads
            writer.abort()
        if bar is not None:
            bar.close()
    summary.processing_s = time.perf_counter() - t_start
    summary.images_per_s = len(plan.items) / summary.processing_s if summary.processing_s > 0 else 0.0
    summary.engine_stats = dict(engine_run.stats)
    _output_paths(cfg, summary, writer)
    return summary


def _review_exports(cfg: AnnotateConfig) -> list[Path]:
    """The review files asked for with ``exports`` (from the ledger, as ``annotator export`` / ``review`` do)."""
    from annotator.review.exports import export_all
    from annotator.finished import open_finished
    from annotator.review.page import write_review_page

    run = open_finished(cfg.output_dir)
    tools = [t for t in cfg.exports if t != "page"]
    written = export_all(run, tools, image_root=cfg.review_image_root) if tools else []
    if "page" in cfg.exports:
        written.append(write_review_page(run, Path(cfg.output_dir) / "review" / "page"))
    return written


def _summary(cfg: AnnotateConfig, plan) -> RunSummary:
    summary = RunSummary(engine=cfg.engine, output_dir=cfg.output_dir)
    summary.refused = [{"path": p, "reason": r} for p, r in plan.refused]
    return summary


def _output_paths(cfg: AnnotateConfig, summary: RunSummary, writer) -> None:
    summary.labels_dir = cfg.labels_dir if cfg.writes_yolo else None
    summary.scores_csv = writer.scores_path
    summary.data_yaml = writer.data_yaml_path
    summary.coco_json = writer.coco_path
    summary.splits = dict(writer.split_counts)


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, desc="annotate")


def _nothing_to_process(cfg: AnnotateConfig, models, plan) -> RunSummary:
    """A re-run with nothing new: reconcile outputs from the ledger without loading any model."""
    from annotator.output import names_from_ledger, open_writer

    names = names_from_ledger(plan)
    if names is None and cfg.prompts == "boxes":
        from annotator.prompts import LabelBoxSource

        names = LabelBoxSource(cfg.prompt_labels, cfg.data).names
    elif names is None and cfg.prompts == "points":
        from annotator.prompt_points import load_points_file

        names = load_points_file(cfg.prompt_points)[0]
    elif names is None and cfg.prompts == "everything":
        names = {0: cfg.everything.class_name}
    elif names is None:  # first run on an empty folder, or a new detector: its names are needed for data.yaml
        from annotator.models import load_yolo

        names = {int(k): str(v) for k, v in load_yolo(models.det_path, trust=cfg.trust_weights).names.items()}
    writer = open_writer(cfg, names, plan)
    writer.close()
    summary = _summary(cfg, plan)
    summary.label_collisions = sorted(writer.collisions)
    _output_paths(cfg, summary, writer)
    return summary


def _write_report(cfg: AnnotateConfig, models, plan, summary: RunSummary) -> None:
    import json

    from annotator.io_atomic import atomic_write_text

    report = {
        "settings": cfg.model_dump(mode="json"),
        "models": {
            "det_model": {"path": str(models.det_path), "sha256": plan.weight_hashes.get(str(models.det_path))},
            "sam_model": {
                "path": str(models.sam_path),
                "sha256": plan.weight_hashes.get(str(models.sam_path)),
                "architecture": models.sam_name,
            },
        },
        "summary": summary.to_dict(),
    }
    path = Path(cfg.output_dir) / "run_report.json"
    atomic_write_text(path, json.dumps(report, indent=2, default=str) + "\n", root=cfg.output_dir)
    summary.report_json = path
