"""The GPU check: one command on a bare GPU machine, JSON and Markdown rows out, under 8 minutes on an H100.

``python -m benchmarks.gpu_check --out DIR`` needs only torch, torchvision, numpy and opencv plus the wheels of
``tools/gpu_wheels.sh`` (installed with ``pip install --no-index --find-links WHEELS``); it installs nothing and
downloads nothing. It builds random-weight yolo11x (from ``yolo11x.yaml``) and SAM 2-b+ (``build_sam2_b(None)``)
-- speed does not depend on the weights -- feeds both pipelines the synthetic ground-truth boxes (the bench's
``--boxes gt``) and writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` with:

- ours vs Ultralytics ``auto_annotate`` images/s at batch 8 and 32, bf16 and fp32, ``compile`` off (and ours
  alone with ``compile`` on, bf16), with peak GPU memory and the model-thread busy share (detect + segment
  seconds of the model thread / wall seconds) of each row;
- host syncs per batch in the model thread (``benchmarks.syncs``' counter around ``Stages.infer``);
- bf16-vs-fp32 mask IoU (the same boxes, label polygons rasterised);
- a ``torch.profiler`` summary of GPU idle gaps between kernels over one bf16 run.

Each row is bounded in images; rows that would start after ``--budget-s`` are written as skipped. The report
is rewritten after every row, so a run killed by a time limit still leaves the rows done so far.
``--device cpu --tiny`` (yolo11n + MobileSAM, the smallest SAM encoder: 2 small images, batch 2) runs the same code on a CPU in a
minute or two: ``tests/test_gpu_check.py`` runs it in a venv shaped like the bare machine. See ``docs/gpu.md``.

Example:
    python -m benchmarks.gpu_check --out /tmp/gpu_check                    # H100: yolo11x + sam2_b, 1080p
    python -m benchmarks.gpu_check --out /tmp/gpu_check --device cpu --tiny  # the CPU test's sizes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

ROW_KEYS = ("name", "batch", "precision", "compile", "which")


def plan(tiny: bool) -> dict[str, Any]:
    """Sizes and rows of a run: the H100 plan, or the CPU test's tiny one."""
    if tiny:
        rows = [dict(batch=2, precision=p, compile=False, which="both") for p in ("bf16", "fp32")]
        return dict(det="yolo11n", sam="mobile_sam", images=2, image_hw="192x256", objects=2, warmup=0, repeats=1,
                    rows=rows, sync_batches=[2], iou_images=1, profile_images=1,
                    iou_sam="sam2_t")  # random MobileSAM keeps no mask: IoU on SAM 2-t  # fmt: skip
    rows = [dict(batch=b, precision=p, compile=False, which="both") for p in ("bf16", "fp32") for b in (8, 32)]
    rows += [dict(batch=b, precision="bf16", compile=True, which="annotator") for b in (8, 32)]
    return dict(det="yolo11x", sam="sam2_b", images=64, image_hw="1080x1920", objects=7, warmup=1, repeats=2,
                rows=rows, sync_batches=[8, 32], iou_images=8, profile_images=16)  # fmt: skip


def build_models(folder: Path, det: str, sam: str) -> tuple[Path, Path]:
    """Random-weight detector (from its YAML) and SAM checkpoint under ``folder``: their paths."""
    from ultralytics import YOLO

    from annotator.random_weights import write_random_sam

    folder.mkdir(parents=True, exist_ok=True)
    det_path = folder / f"{det}_random.pt"
    if not det_path.exists():
        YOLO(f"{det}.yaml").save(str(det_path))
    sam_path = folder / f"{sam}.pt"
    if not sam_path.exists():
        write_random_sam(folder, sam)
    return det_path, sam_path


def bench_row(row: dict, p: dict, det: Path, sam: Path, device: str) -> dict[str, Any]:
    """One bench run (``benchmarks.versus_ultralytics.run_bench``) for ``row``: the fields of the report."""
    from benchmarks.bench_cli import build_parser
    from benchmarks.versus_ultralytics import run_bench

    argv = ["--det-model", str(det), "--sam-model", str(sam), "--device", device, "--images", str(p["images"]),
            "--image-size", p["image_hw"], "--objects", str(p["objects"]), "--boxes", "gt",
            "--batch-size", str(row["batch"]), "--repeats", str(p["repeats"]), "--warmup", str(p["warmup"]),
            "--which", row["which"]]  # fmt: skip
    argv += ["--fp32"] if row["precision"] == "fp32" else []
    argv += ["--compile"] if row["compile"] else []
    rep = run_bench(build_parser().parse_args(argv))
    ours = rep["pipelines"].get("annotator", {})
    theirs = rep["pipelines"].get("ultralytics", {})
    st = ours.get("stage_seconds", {})
    wall = sum(ours.get("seconds_runs", [])) / max(len(ours.get("seconds_runs", [])), 1)
    busy = (st.get("detect", 0.0) + st.get("segment", 0.0)) / wall if wall > 0 else None
    return {
        "ours_images_per_s": ours.get("images_per_s"),
        "ultralytics_images_per_s": theirs.get("images_per_s") if theirs else None,
        "ratio": rep.get("ratio"),
        "model_thread_busy": round(busy, 3) if busy is not None else None,
        "ours_peak_gpu_mib": ours.get("peak_cuda_mib"),
        "ultralytics_peak_gpu_mib": theirs.get("peak_cuda_mib") if theirs else None,
        "ours_stage_seconds": st,
        "boxes": ours.get("boxes"),
        "half": rep.get("half"),
        "warmup_s": rep.get("warmup_s"),
    }


def _dataset(root: Path, n: int, hw: str, objects: int) -> Path:
    from annotator.synthetic import write_synthetic_dataset

    h, _, w = hw.partition("x")
    if not (root / "ds").exists():
        write_synthetic_dataset(root / "ds", n, image_hw=(int(h), int(w)), subdirs=("",), empty_fraction=0.0,
                                labels="box", ext=".jpg", n_objects=(objects, objects))  # fmt: skip
    return root / "ds"


def _run_boxes(data: Path, out: Path, det: Path, sam: Path, device: str, half: bool, batch: int):
    """Our local engine on ``data`` with its label files as box prompts; the run summary."""
    from annotator.api import run
    from annotator.config import make_config

    cfg = make_config(data=data / "images", det_model=str(det), sam_model=str(sam), device=device, half=half,
                      batch_size=batch, output_dir=out, prompts="boxes", prompt_labels=data / "labels",
                      format="yolo", progress=False, sam_min_score=0.0, min_area_px=0.0)  # fmt: skip
    return run(cfg)  # every mask kept: random weights give low scores


def _polygon_masks(label: Path, hw: tuple[int, int]) -> list:
    import cv2
    import numpy as np

    h, w = hw
    masks = []
    for line in label.read_text().splitlines() if label.exists() else []:
        xy = np.array(line.split()[1:], dtype=np.float64).reshape(-1, 2) * (w, h)
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [np.round(xy).astype(np.int32)], 1)
        masks.append(m.astype(bool))
    return masks


def mask_iou(root: Path, p: dict, det: Path, sam: Path, device: str) -> dict[str, Any]:
    """Mean and min IoU of the masks of a bf16 run and an fp32 run on the same box prompts."""
    import numpy as np

    if p.get("iou_sam", p["sam"]) != p["sam"]:
        _, sam = build_models(sam.parent, p["det"], p["iou_sam"])
    data = _dataset(root / "iou", p["iou_images"], p["image_hw"], p["objects"])
    for half in (True, False):
        _run_boxes(data, root / "iou" / f"out_{int(half)}", det, sam, device, half, p["rows"][0]["batch"])
    h, _, w = p["image_hw"].partition("x")
    ious = []
    for lab in sorted((root / "iou" / "out_0").rglob("*.txt")):
        a = _polygon_masks(lab, (int(h), int(w)))
        b = _polygon_masks(root / "iou" / "out_1" / lab.relative_to(root / "iou" / "out_0"), (int(h), int(w)))
        for x, y in zip(a, b):
            union = np.logical_or(x, y).sum()
            ious.append(float(np.logical_and(x, y).sum() / union) if union else 1.0)
    return {"instances": len(ious), "mean": float(np.mean(ious)) if ious else None,
            "min": float(np.min(ious)) if ious else None,
            "note": "random SAM weights: noisy masks, so a low IoU may be the weights' noise, not bf16"}  # fmt: skip


def idle_gaps(events, top: int = 5) -> dict[str, Any]:
    """GPU busy/idle summary from profiler ``events`` (kernel intervals in us, merged): span, busy, gaps.

    Example:
        >>> from types import SimpleNamespace as N
        >>> ev = [N(device_type="cuda", start=0, end=10), N(device_type="cuda", start=5, end=20),
        ...       N(device_type="cuda", start=120, end=130)]
        >>> idle_gaps(ev)["gaps_us_largest"], idle_gaps(ev)["busy_share"]
        ([100.0], 0.2308)
    """
    iv = sorted((float(e.start), float(e.end)) for e in events if str(e.device_type).lower().endswith("cuda"))
    if not iv:
        return {"kernels": 0, "note": "no GPU kernels (a CPU run)"}
    merged = [list(iv[0])]
    for s, e in iv[1:]:
        if s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    gaps = [b[0] - a[1] for a, b in zip(merged, merged[1:])]
    span = merged[-1][1] - merged[0][0]
    busy = sum(e - s for s, e in merged)
    return {
        "kernels": len(iv),
        "span_ms": round(span / 1e3, 3),
        "busy_share": round(busy / span, 4) if span else None,
        "gaps_over_100us": sum(g > 100 for g in gaps),
        "gap_ms_over_100us": round(sum(g for g in gaps if g > 100) / 1e3, 3),
        "gaps_us_largest": sorted((round(g, 1) for g in gaps), reverse=True)[:top],
    }


def profile(root: Path, p: dict, det: Path, sam: Path, device: str) -> dict[str, Any]:
    """One bf16 run of our local engine under ``torch.profiler``: GPU idle gaps and the top ops."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    data = _dataset(root / "prof", p["profile_images"], p["image_hw"], p["objects"])
    batch = p["rows"][0]["batch"]
    _run_boxes(data, root / "prof" / "warm", det, sam, device, True, batch)  # warm-up (cudnn, allocator)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() and device != "cpu" else [])
    with tprofile(activities=acts) as prof:
        _run_boxes(data, root / "prof" / "out", det, sam, device, True, batch)
    events = [
        type("K", (), {"device_type": e.device_type, "start": e.time_range.start, "end": e.time_range.end})()
        for e in prof.events()
        if str(e.device_type).lower().endswith("cuda")
    ]
    key = "self_cuda_time_total" if len(acts) > 1 else "self_cpu_time_total"
    top = sorted(prof.key_averages(), key=lambda a: getattr(a, key, 0.0), reverse=True)[:5]
    return {**idle_gaps(events), "top_ops": [{"op": a.key, "self_ms": round(getattr(a, key, 0.0) / 1e3, 2)} for a in top]}


def syncs(root: Path, p: dict, device: str) -> list[dict]:
    """Host syncs per batch in the model thread (shapes yolo11n + random sam2_t: the count does not depend on
    the models), on ``device``; on a CPU with ``ANNOTATOR_CUDA_CODE_PATH=1`` (the CUDA path's structure)."""
    from benchmarks.syncs import measure

    old = os.environ.get("ANNOTATOR_CUDA_CODE_PATH")
    os.environ["ANNOTATOR_CUDA_CODE_PATH"] = "1"
    try:
        return measure(root / "syncs", p["sync_batches"], ["detector", "boxes"], images=max(p["sync_batches"]),
                       image_hw=(160, 224), device=device, sam_name=p["sam"])  # fmt: skip
    finally:
        if old is None:
            os.environ.pop("ANNOTATOR_CUDA_CODE_PATH", None)
        else:
            os.environ["ANNOTATOR_CUDA_CODE_PATH"] = old


def _fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def to_markdown(rep: dict[str, Any]) -> str:
    """The report's rows as Markdown tables."""
    out = [f"# GPU check: {rep['device_name']}, {rep['det']} + {rep['sam']}, {rep['images']} images "
           f"{rep['image_hw']}, {rep['objects']} boxes each (ground truth), torch {rep['torch']}", "",
           "| batch | precision | compile | ours img/s | Ultralytics img/s | ours / UL | model thread busy "
           "| ours peak GPU MiB | UL peak GPU MiB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rep["rows"]:
        if "skipped" in r or "error" in r:
            out.append(f"| {r['batch']} | {r['precision']} | {r['compile']} | {r.get('skipped') or r.get('error')} "
                       "| | | | | |")  # fmt: skip
            continue
        out.append(f"| {r['batch']} | {r['precision']} | {r['compile']} | {_fmt(r['ours_images_per_s'], '.2f')} | "
                   f"{_fmt(r['ultralytics_images_per_s'], '.2f')} | {_fmt(r['ratio'], '.2f')} | "
                   f"{_fmt(r['model_thread_busy'], '.3f')} | {_fmt(r['ours_peak_gpu_mib'], '.0f')} | "
                   f"{_fmt(r['ultralytics_peak_gpu_mib'], '.0f')} |")  # fmt: skip
    out += ["", "| prompts | batch | host syncs per batch (max) | by op, per batch |", "| --- | --- | --- | --- |"]
    for s in rep.get("syncs") or []:
        ops = ", ".join(f"{k} {v:g}" for k, v in s["by_op_per_batch"].items())
        out.append(f"| {s['prompts']} | {s['batch']} | {s['syncs_per_batch_max']} | {ops} |")
    iou = rep.get("mask_iou") or {}
    out += ["", f"bf16 vs fp32 mask IoU: mean {_fmt(iou.get('mean'), '.4f')}, min {_fmt(iou.get('min'), '.4f')} "
            f"over {iou.get('instances', 0)} instances.", ""]  # fmt: skip
    pr = rep.get("profile") or {}
    if pr.get("kernels"):
        out.append(f"GPU idle gaps (one bf16 run): span {pr['span_ms']} ms, kernels busy {pr['busy_share']:.1%}, "
                   f"{pr['gaps_over_100us']} gaps > 100 us totalling {pr['gap_ms_over_100us']} ms, largest "
                   f"{pr['gaps_us_largest']} us.")  # fmt: skip
    else:
        out.append(f"Profiler: {pr.get('note', pr.get('error', '-'))}.")
    if pr.get("top_ops"):
        out.append("Top ops: " + ", ".join(f"{o['op']} {o['self_ms']} ms" for o in pr["top_ops"]) + ".")
    out += ["", f"ray imported: {rep['ray_imported']}; wall {rep['wall_s']:.0f} s (budget {rep['budget_s']} s)."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--device", default="0", help="0 / cuda:0 (default 0) or cpu")
    ap.add_argument("--tiny", action="store_true", help="yolo11n + mobile_sam, 2 small images, batch 2 (CPU test)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no bench row after this (default 420)")
    ap.add_argument("--weights", type=Path, default=None, help="folder for the random weights (default OUT/weights)")
    ns = ap.parse_args(argv)
    import torch

    t0 = time.perf_counter()
    p = plan(ns.tiny)
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.device != "cpu" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device (use --device cpu --tiny for the CPU check)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are fp32, as Ultralytics runs them
    rep: dict[str, Any] = {
        "device": ns.device, "device_name": torch.cuda.get_device_name(0) if ns.device != "cpu" else "cpu",
        "torch": torch.__version__, "det": p["det"], "sam": p["sam"], "images": p["images"],
        "image_hw": p["image_hw"], "objects": p["objects"], "repeats": p["repeats"], "budget_s": ns.budget_s,
        "note": "random weights, ground-truth boxes for both pipelines; ours vs Ultralytics in one process",
        "rows": [], "syncs": None, "mask_iou": None, "profile": None,
    }  # fmt: skip

    def save() -> None:
        rep["wall_s"] = time.perf_counter() - t0
        rep["ray_imported"] = "ray" in sys.modules
        (ns.out / "gpu_check.json").write_text(json.dumps(rep, indent=2, default=str))
        (ns.out / "gpu_check.md").write_text(to_markdown(rep))

    def log(s: str) -> None:
        print(f"[gpu_check {time.perf_counter() - t0:6.1f} s] {s}", file=sys.stderr, flush=True)

    det, sam = build_models(ns.weights or ns.out / "weights", p["det"], p["sam"])
    log(f"models: {det.name}, {sam.name}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        for name, fn in (("syncs", lambda: syncs(root, p, ns.device if ns.device != "0" else "cuda:0")),
                         ("mask_iou", lambda: mask_iou(root, p, det, sam, ns.device)),
                         ("profile", lambda: profile(root, p, det, sam, ns.device))):  # fmt: skip
            try:
                rep[name] = fn()
            except Exception as e:  # a failed section is a row of the report, not the end of the check
                rep[name] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{name} done")
            save()
        for row in p["rows"]:
            entry = {**row}
            if time.perf_counter() - t0 > ns.budget_s:
                entry["skipped"] = f"skipped: past the {ns.budget_s:.0f} s budget"
            else:
                try:
                    entry.update(bench_row(row, p, det, sam, ns.device))
                except Exception as e:
                    entry["error"] = f"{type(e).__name__}: {e}"
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()
            rep["rows"].append(entry)
            log(f"row {row}: {entry.get('ours_images_per_s', entry.get('skipped', entry.get('error')))}")
            save()
    save()
    print(to_markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
