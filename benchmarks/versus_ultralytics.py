"""``annotator bench``: our pipeline against Ultralytics' ``auto_annotate`` on the same images and models.

Both pipelines run in this process on the same images, weights and settings. Models are loaded once and
warmed up first; the timed repetitions then alternate (Ultralytics first on even repetitions, ours first on
odd ones) so that load from other processes hits both alike. Reported per pipeline: images/s (median and
range over repetitions), the ratio ours/theirs, our per-stage seconds (decode, detect, segment, polygonize,
write), a coarse split of Ultralytics' time, peak RSS, and peak CUDA memory on a GPU.

* Ultralytics' side is its real ``ultralytics.data.annotator.auto_annotate`` function. Inside this process
  only, while it runs, the names ``YOLO`` and ``SAM`` of that module are patched to hand back the models the
  bench already built (so model loading is not timed, as on our side); see :mod:`benchmarks.contenders`.
* ``--boxes gt`` (synthetic images only) feeds the ground-truth boxes of the synthetic shapes to *both*
  pipelines as the detector output (a stub detector inside the bench). Use it with a random-weight
  detector, which finds nothing, so that SAM runs at all. The output says so. See :mod:`benchmarks.ground_truth`.
* The polygon stage is also timed on the ground-truth masks of the synthetic shapes (realistic outlines),
  since random-weight SAM masks have unrealistically long, noisy contours.

Command line (:mod:`benchmarks.bench_cli`)::

    annotator bench --det-model yolo11n.pt --sam-model sam2_t.pt --images 8 --image-size 480x640 \\
        --objects 5 --repeats 3 --device cpu [--boxes gt] [--batch-size 4] [--json]
    python -m benchmarks ...  # the same

Example:
    >>> rep = run_bench(build_parser().parse_args(["--boxes", "gt", "--images", "2"]))  # doctest: +SKIP
    >>> print(format_report(rep))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.contenders import STAGES, OursPipeline, RunTiming, UltralyticsPipeline
from benchmarks.ground_truth import (
    GT_BOXES_NOTE,
    GT_MASKS_NOTE,
    BenchImages,
    GroundTruth,
    GtDetector,
    GtMasks,
    GtYOLO,
    folder_images,
    image_key,
    make_synthetic_images,
    sam_input_key,
)
from benchmarks.timers import Device, load_1min

__all__ = ["GT_BOXES_NOTE", "GT_MASKS_NOTE", "POLYGON_NOTE", "STAGES", "format_report", "run_bench"]

POLYGON_NOTE = (
    "polygon stage timed on the ground-truth masks of the synthetic shapes (realistic outlines), "
    "not on this run's SAM masks"
)


def polygon_stage_on_gt(images: BenchImages, polygonizer, repeats: int) -> dict[str, Any]:
    """Seconds per image of our polygonizer and of Ultralytics' ``masks.xyn`` on the ground-truth masks."""
    import torch
    from ultralytics.engine.results import Masks

    from annotator.records import Instance, MaskCrop

    inputs = []
    for g in images.gt.values():
        insts = [
            Instance(int(c), 1.0, b.copy(), 1.0, MaskCrop.from_full(m), k)
            for k, (c, b, m) in enumerate(zip(g.class_ids, g.xyxy_px, g.masks))
        ]
        inputs.append((insts, torch.from_numpy(g.masks.copy()), g.masks.shape[1:]))
    n_img = max(len(inputs), 1)
    for insts, full, hw in inputs[:1]:  # warm-up: lazy imports, first-call costs
        polygonizer(insts)
        if len(full):
            _ = Masks(full, tuple(hw)).xyn
    ours_s, theirs_s = [], []
    ours_vertices = theirs_vertices = n_poly_ours = n_poly_theirs = 0
    for r in range(max(repeats, 1)):
        order = ("theirs", "ours") if r % 2 == 0 else ("ours", "theirs")
        for who in order:
            t0 = time.perf_counter()
            for insts, full, hw in inputs:
                if who == "ours":
                    res = polygonizer(insts)
                    if r == 0:
                        n_poly_ours += sum(len(p.polygons_xy_px) for p in res)
                        ours_vertices += sum(len(xy) for p in res for xy in p.polygons_xy_px)
                elif len(full):
                    segs = Masks(full, tuple(hw)).xyn
                    if r == 0:
                        n_poly_theirs += len(segs)
                        theirs_vertices += sum(len(s) for s in segs)
            (ours_s if who == "ours" else theirs_s).append((time.perf_counter() - t0) / n_img)
    return {
        "note": POLYGON_NOTE,
        "annotator_s_per_image": statistics.median(ours_s),
        "ultralytics_s_per_image": statistics.median(theirs_s),
        "annotator_vertices_per_polygon": ours_vertices / max(n_poly_ours, 1),
        "ultralytics_vertices_per_polygon": theirs_vertices / max(n_poly_theirs, 1),
    }


# -- the bench ------------------------------------------------------------------------------------------------
def _summarise(runs: list[RunTiming]) -> dict[str, Any]:
    ips = [r.images / r.seconds if r.seconds > 0 else 0.0 for r in runs]
    stage_keys = list(runs[0].stage_seconds) if runs else []
    cuda = [r.peak_cuda_mib for r in runs if r.peak_cuda_mib is not None]
    return {
        "images": runs[0].images if runs else 0,
        "boxes": runs[0].boxes if runs else 0,
        "instances": runs[0].instances if runs else 0,
        "images_per_s": statistics.median(ips) if ips else 0.0,
        "images_per_s_min": min(ips, default=0.0),
        "images_per_s_max": max(ips, default=0.0),
        "images_per_s_runs": ips,
        "seconds_runs": [r.seconds for r in runs],
        "load_1min_runs": [r.load_1min for r in runs],
        "cpu_s_per_image": statistics.median(r.cpu_s / max(r.images, 1) for r in runs) if runs else 0.0,
        "stage_seconds": {k: statistics.median(r.stage_seconds[k] for r in runs) for k in stage_keys},
        "peak_rss_mib": max((r.peak_rss_mib for r in runs), default=0.0),
        "peak_cuda_mib": max(cuda) if cuda else None,
    }


def run_bench(ns: argparse.Namespace, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the benchmark described by the parsed arguments; return the report as a dict (see :func:`format_report`)."""
    import torch

    from annotator.models import resolve_models
    from annotator.synthetic import SHAPE_NAMES

    if ns.interop_threads:
        torch.set_num_interop_threads(ns.interop_threads)  # before any parallel work: process-wide
    work = Path(tempfile.mkdtemp(prefix="annotator-bench-"))
    try:
        if ns.data is not None:
            images = folder_images(Path(ns.data))
            if ns.boxes == "gt":
                raise ValueError("--boxes gt needs the bench's synthetic images (leave out DATA)")
        else:
            images = make_synthetic_images(work / "images", ns.images, ns.image_size, ns.objects, seed=ns.seed)
        models = resolve_models(ns.det_model, ns.sam_model, weights_dir=ns.weights_dir)
        device = Device(ns.device)
        settings = dict(device=ns.device, conf=ns.conf, iou=0.45, imgsz=ns.imgsz, max_det=300, classes=None)
        if not images.synthetic and ns.masks == "gt":
            raise ValueError("--masks gt needs the bench's synthetic images (leave out DATA)")
        decoded_gt: list[tuple[Any, GroundTruth]] = []  # our decoder's image, truth
        gt_keyed_ul: dict[tuple, GroundTruth] = {}  # Ultralytics' imread image -> truth
        if ns.boxes == "gt" or ns.masks == "gt":
            from ultralytics.utils.patches import imread

            from annotator.records import SourceItem
            from annotator.sources import decode_image_bytes

            for p in images.files:
                dec = decode_image_bytes(p.read_bytes(), SourceItem(p, p.name))
                decoded_gt.append((dec.image_bgr, images.gt[p.name]))
                gt_keyed_ul[image_key(imread(str(p)))] = images.gt[p.name]
        log(f"building models: det={models.det_path.name} sam={models.sam_path.name} device={device.name}")
        cfg_kwargs = dict(
            data=images.folder,
            det_model=str(models.det_path),
            sam_model=str(models.sam_path),
            output_dir=work / "out_ours",
            batch_size=ns.batch_size,
            format="yolo",
            compat=ns.compat,
            half=not ns.fp32,
            progress=False,
            **settings,
        )
        pipes: dict[str, Any] = {}
        if ns.which in ("both", "ultralytics"):
            pipes["ultralytics"] = UltralyticsPipeline(
                models.det_path,
                models.sam_path,
                settings,
                device,
                GtYOLO(images.gt, SHAPE_NAMES) if ns.boxes == "gt" else None,
                threads=ns.ultralytics_threads,
                gt_masks=GtMasks(gt_keyed_ul) if ns.masks == "gt" else None,
            )
        if ns.which in ("both", "annotator"):
            ours = OursPipeline(
                cfg_kwargs,
                GtDetector(decoded_gt, SHAPE_NAMES) if ns.boxes == "gt" else None,
                ns.threads,
                ns.cpu_workers,
                gt_masks=GtMasks({sam_input_key(im): g for im, g in decoded_gt}) if ns.masks == "gt" else None,
            )
            if ns.compile:
                ours.compile_encoder()
            pipes["annotator"] = ours

        # warm-up: the first batch of images (and the remainder batch size, for compiled shapes)
        warm_s: dict[str, float] = {}
        if ns.warmup > 0:
            sizes = sorted({min(len(images.files), ns.batch_size), len(images.files) % ns.batch_size} - {0})
            for k in sizes:
                warm_dir = work / f"warm{k}"
                warm_dir.mkdir()
                for p in images.files[:k]:
                    shutil.copyfile(p, warm_dir / p.name)
                for name, pipe in pipes.items():
                    for w in range(ns.warmup if k == sizes[0] else 1):
                        t0 = time.perf_counter()
                        pipe.run(warm_dir, work / f"warm_out_{name}")
                        warm_s[name] = warm_s.get(name, 0.0) + time.perf_counter() - t0
                        shutil.rmtree(work / f"warm_out_{name}", ignore_errors=True)
                        log(f"warm-up {name} ({k} images): {time.perf_counter() - t0:.2f} s")

        runs: dict[str, list[RunTiming]] = {name: [] for name in pipes}
        names = list(pipes)
        for r in range(ns.repeats):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                out = work / f"out_{name}_{r}"
                cpu0 = time.process_time()
                t = pipes[name].run(images.folder, out)
                t.cpu_s = time.process_time() - cpu0
                t.load_1min = load_1min()
                runs[name].append(t)
                log(f"repeat {r + 1}/{ns.repeats} {name}: {t.images} images in {t.seconds:.2f} s (load {t.load_1min})")
                shutil.rmtree(out, ignore_errors=True)

        report: dict[str, Any] = {
            "images": len(images.files),
            "image_hw": list(images.image_hw) if images.image_hw else None,
            "synthetic": images.synthetic,
            "objects_per_image": ns.objects if images.synthetic else None,
            "det_model": str(models.det_path),
            "sam_model": str(models.sam_path),
            "device": device.name,
            "imgsz": ns.imgsz,
            "batch_size": ns.batch_size,
            "repeats": ns.repeats,
            "warmup": ns.warmup,
            "boxes": ns.boxes,
            "boxes_note": GT_BOXES_NOTE if ns.boxes == "gt" else "boxes: the detector's own output",
            "masks": ns.masks,
            "masks_note": GT_MASKS_NOTE if ns.masks == "gt" else "masks: SAM's own output",
            "compat": ns.compat,
            "compile": bool(ns.compile),
            "half": bool(device.cuda and not ns.fp32),
            "torch": torch.__version__,
            "torch_threads": {name: pipe.threads for name, pipe in pipes.items()},
            "torch_interop_threads": torch.get_num_interop_threads(),
            "annotator_cpu_workers": pipes["annotator"].cpu_workers if "annotator" in pipes else None,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "warmup_s": warm_s,
            "pipelines": {name: _summarise(rs) for name, rs in runs.items()},
        }
        p = report["pipelines"]
        if "annotator" in p and "ultralytics" in p and p["ultralytics"]["images_per_s"] > 0:
            report["ratio"] = p["annotator"]["images_per_s"] / p["ultralytics"]["images_per_s"]
            report["ratio_runs"] = [
                a / b if b > 0 else 0.0
                for a, b in zip(p["annotator"]["images_per_s_runs"], p["ultralytics"]["images_per_s_runs"])
            ]
        else:
            report["ratio"], report["ratio_runs"] = None, []
        notes = []
        for name, s in p.items():
            if s["boxes"] == 0:
                notes.append(f"{name}: the detector found no box, so SAM never ran (try --boxes gt)")
            elif s["instances"] == 0:
                notes.append(
                    f"{name}: SAM ran on {s['boxes']} boxes but kept no mask (scores <= 0.25: random weights?)"
                )
        if images.synthetic and "annotator" in pipes:
            report["polygon_stage_gt"] = polygon_stage_on_gt(images, pipes["annotator"].stages.polygonizer, ns.repeats)
        else:
            report["polygon_stage_gt"] = None
        if not images.synthetic:
            notes.append("polygon stage on ground-truth masks skipped: a user folder has no ground truth")
        report["notes"] = notes
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def format_report(rep: dict[str, Any]) -> str:
    """The human-readable table of a :func:`run_bench` report."""
    hw = "x".join(map(str, rep["image_hw"])) if rep["image_hw"] else "various sizes"
    src = f"synthetic, {rep['objects_per_image']} objects each" if rep["synthetic"] else "folder"
    lines = [
        f"annotator bench: {rep['images']} images {hw} ({src}); det={Path(rep['det_model']).name} "
        f"sam={Path(rep['sam_model']).name} device={rep['device']} imgsz={rep['imgsz']} batch={rep['batch_size']} "
        f"repeats={rep['repeats']} torch={rep['torch']} "
        f"threads={','.join(f'{k}:{v}' for k, v in rep['torch_threads'].items())}"
        + (f" encoder-workers(ours)={workers}" if (workers := rep.get("annotator_cpu_workers") or 1) > 1 else "")
        + (" compile=encoder(ours)" if rep["compile"] else "")
        + (" half(ours)" if rep.get("half") else ""),
        rep["boxes_note"],
        rep.get("masks_note", "masks: SAM's own output"),
        f"{'pipeline':<12} {'images/s':>9} {'min..max':>15} {'CPU s/image':>11} {'boxes':>6} {'instances':>9} "
        f"{'peak RSS MiB':>12}"
        + (f" {'peak CUDA MiB':>13}" if rep["device"] == "cuda" else ""),
    ]
    for name, s in rep["pipelines"].items():
        rng = f"{s['images_per_s_min']:.3f}..{s['images_per_s_max']:.3f}"
        row = (
            f"{name:<12} {s['images_per_s']:>9.3f} {rng:>15} {s.get('cpu_s_per_image', float('nan')):>11.2f} "
            f"{s['boxes']:>6} "
            f"{s['instances']:>9} {s['peak_rss_mib']:>12.0f}"
        )
        if rep["device"] == "cuda":
            row += f" {s['peak_cuda_mib'] or 0:>13.0f}"
        lines.append(row)
    if rep.get("ratio") is not None:
        rr = rep["ratio_runs"]
        lines.append(
            f"ratio annotator/ultralytics (images/s, medians): {rep['ratio']:.2f}x"
            f"  (per repeat {min(rr):.2f}..{max(rr):.2f})"
        )
    for name, s in rep["pipelines"].items():
        st = "  ".join(f"{k} {v:.3f}" for k, v in s["stage_seconds"].items())
        what = (
            "per-stage s (sum over images; decode/polygonize/write overlap the models)"
            if name == "annotator"
            else "split s"
        )
        lines.append(f"{name} {what}: {st}")
    pg = rep.get("polygon_stage_gt")
    if pg:
        lines.append(pg["note"] + ":")
        lines.append(
            f"  annotator {pg['annotator_s_per_image'] * 1e3:.2f} ms/image ({pg['annotator_vertices_per_polygon']:.0f} "
            f"vertices/polygon), ultralytics masks.xyn {pg['ultralytics_s_per_image'] * 1e3:.2f} ms/image "
            f"({pg['ultralytics_vertices_per_polygon']:.0f} vertices/polygon)"
        )
    lines.append("peak RSS is process-wide: both pipelines' models are loaded in this process")
    loads = [x for s in rep["pipelines"].values() for x in s.get("load_1min_runs", []) if x is not None]
    if loads:
        lines.append(
            f"load average during the repeats: {min(loads):.1f}..{max(loads):.1f} on {rep['cpu_count']} CPUs "
            "(other processes compete: compare the interleaved repeats, not runs taken at other times)"
        )
    lines.extend(f"note: {n}" for n in rep["notes"])
    return "\n".join(lines)
