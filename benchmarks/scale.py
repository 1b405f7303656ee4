"""What a nightly job costs as the folder grows: first run, no-op re-run, +10 images, format change, export.

Builds N tiny synthetic JPEGs, runs the stand-in models of :mod:`benchmarks.overlap` (latency 0: only the host
side is measured) through the real engine and :func:`annotator.api.run`, then times each operation in a
**child process** (``os.wait4`` gives that child's own CPU seconds and peak RSS, imports included: about 2 CPU s
and 1 GB of torch and friends); ``run s`` / ``run CPU s`` are the operation alone, timed inside the child:

=========  ==========================================================================================
first      the first run (format ``both``: label files, data.yaml, list, COCO)
noop       the same command again: nothing changed
add10      10 new images added to the folder
noop2      nothing changed again (after the add)
format     a format change: ``save_conf`` on (``scores.csv`` appears; label files and COCO unchanged)
export     ``annotator export OUT --to labelstudio``
=========  ==========================================================================================

Usage::

    python -m benchmarks.scale --images 1000 10000 [--keep DIR] [--json FILE]

With ``--keep DIR`` (one N only) the images stay in ``DIR/images``, the output in ``DIR/labels`` and a
``DIR/config.yaml`` such that ``annotator annotate --config DIR/config.yaml`` is a no-op on it that loads no
model (the stand-in weight files are real files, so the fingerprints are real).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE_HW = (48, 64)
BOXES = 2
OPS = ("first", "noop", "add10", "noop2", "format", "export")


def write_images(folder: Path, start: int, n: int) -> None:
    """``n`` tiny JPEGs named ``img{start..start+n-1:07d}.jpg`` (a circle on noise; all differ)."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    h, w = IMAGE_HW
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(start, start + n):
        im = np.roll(base, i % w, axis=1).copy()
        cv2.circle(im, (int(i * 7 % w), int(i * 3 % h)), 9, (0, 0, 255), -1)
        cv2.imwrite(str(folder / f"img{i:07d}.jpg"), im, [cv2.IMWRITE_JPEG_QUALITY, 80])


def _settings(root: Path, save_conf: bool) -> dict:
    return {
        "data": str(root / "images"), "det_model": str(root / "standin_det.pt"), "sam_model": str(root / "sam2_t.pt"),
        "output_dir": str(root / "labels"), "device": "cpu", "format": "both", "save_conf": save_conf,
        "batch_size": 8, "workers": 1, "progress": False,
    }  # fmt: skip


def _child(op: str, root: Path) -> None:
    """One operation, in this (child) process."""
    if op == "export":
        from annotator.cli import main

        t0, c0 = time.perf_counter(), time.process_time()
        rc = main(["export", str(root / "labels"), "--to", "labelstudio"])
        if rc != 0:
            raise SystemExit(rc)
        print(json.dumps({"run_s": time.perf_counter() - t0, "run_cpu_s": time.process_time() - c0}))
        return
    from annotator.api import run
    from annotator.config import make_config
    from annotator.stages import Stages
    from benchmarks.overlap import FixedLatencyDetector, FixedLatencySegmenter

    cfg = make_config(**_settings(root, save_conf=op == "format"))
    det, seg = FixedLatencyDetector(0.0, BOXES, imgsz=64), FixedLatencySegmenter(0.0)
    stages = Stages(det, seg, Stages.build_polygonizer(cfg), det_batch=cfg.batch_size)  # type: ignore[arg-type]
    t0, c0 = time.perf_counter(), time.process_time()
    s = run(cfg, engine_options={"stages": stages})
    t1, c1 = time.perf_counter(), time.process_time()
    if s.failed:
        raise SystemExit(f"{op}: {s.failed} images failed: {s.failures[:3]}")
    print(json.dumps({"run_s": t1 - t0, "run_cpu_s": c1 - c0, "annotated": s.annotated, "unchanged": s.unchanged}))


def measure(op: str, root: Path) -> dict:
    """Run ``op`` in a child process: wall s, CPU s (user + system) and peak RSS (MiB) of that child."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", YOLO_OFFLINE="1", YOLO_AUTOINSTALL="False")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--child", op, str(root)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = p.stdout.read(), p.stderr.read()  # type: ignore[union-attr]
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{op} failed ({p.returncode}): {err.decode(errors='replace')[-2000:]}")
    detail = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "op": op, "wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "peak_rss_mib": round(ru.ru_maxrss / 1024, 1), "run_s": round(detail.pop("run_s"), 3),
        "run_cpu_s": round(detail.pop("run_cpu_s"), 3), **detail,
    }  # fmt: skip


def bench(n: int, root: Path, ops=OPS) -> list[dict]:
    """Build ``n`` images under ``root`` and measure every operation in order."""
    write_images(root / "images", 0, n)
    for name in ("standin_det.pt", "sam2_t.pt"):  # real files: hashed into the fingerprints, never loaded
        (root / name).write_bytes(b"stand-in " + name.encode())
    rows = []
    for op in ops:
        if op == "add10":
            write_images(root / "images", n, 10)
        rows.append({"images": n, **measure(op, root)})
        print(_line(rows[-1]), flush=True)
    import yaml

    (root / "config.yaml").write_text(yaml.safe_dump(_settings(root, save_conf=True)))
    return rows


def _line(r: dict) -> str:
    return (f"| {r['images']:>7} | {r['op']:<7} | {r['wall_s']:>8.2f} | {r['cpu_s']:>7.2f} | {r['peak_rss_mib']:>8.1f} "
            f"| {r['run_s']:>7.3f} | {r['run_cpu_s']:>9.3f} |")  # fmt: skip


HEADER = (
    "|  images | op      |   wall s |   CPU s | peak MiB |   run s | run CPU s |\n"
    "|--------:|---------|---------:|--------:|---------:|--------:|----------:|"
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        _child(argv[1], Path(argv[2]))
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[1000])
    p.add_argument("--keep", default=None, help="leave images, labels and config.yaml in this folder (one N)")
    p.add_argument("--json", default=None, help="write the rows as JSON to this file")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    ns = p.parse_args(argv)
    if ns.keep and len(ns.images) != 1:
        p.error("--keep takes one --images N")
    print(HEADER, flush=True)
    rows = []
    for n in ns.images:
        if ns.keep:
            root = Path(ns.keep)
            root.mkdir(parents=True, exist_ok=True)
            rows += bench(n, root, ns.ops)
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f"scale{n}_"))
            try:
                rows += bench(n, tmp, ns.ops)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
