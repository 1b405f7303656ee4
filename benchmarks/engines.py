"""Local engine vs Ray engine: throughput on a few real-work images, peak memory on many tiny ones.

Run:  /work/venv/bin/python benchmarks/engines.py speed  [--n 12] [--repeats 3]
      /work/venv/bin/python benchmarks/engines.py memory [--sizes 500 4000]

speed   ``--n`` synthetic 320x320 shapes images; the trained shapes detector
        (``sample_data/models/shapes_yolo11n.pt``) + a random-weight SAM 2-tiny, CPU, ``batch_size`` 4.
        Each repeat runs local, Ray fused and Ray split on the same images. Ray runs share one local Ray
        instance (started once, its start-up time reported apart). Reported: images/s over the processing
        time (``RunSummary.images_per_s``: Ray's includes its actors' start-up and model loading) and wall
        seconds per run; median and range over the repeats.
memory  ``--sizes`` folders of 64x64 noise images, random-weight YOLO at ``imgsz`` 64 (no detections, so
        SAM never runs: this measures the engines' own overhead per image). Each run is a fresh process
        (Ray: the engine starts and stops its own instance, 2 CPUs). Peak resident memory sampled
        every 0.2 s: the driver (this process) and the sum over Ray's worker processes (``ray::*``).
        RSS counts shared pages (torch libraries, the object store's mapped pages) once per process.

The machine is shared: numbers move with the load of other processes; the range shows how much.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from annotator.api import run  # noqa: E402
from annotator.config import make_config  # noqa: E402

SHAPES_DETECTOR = REPO / "sample_data" / "models" / "shapes_yolo11n.pt"


class PeakMemory:
    """Samples RSS of this process and of the Ray worker processes it started (``ray::*`` descendants) in a
    thread; keeps the peaks (MiB)."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.driver = self.workers = self.total = 0.0
        self.max_workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            driver = me.memory_info().rss / 2**20
            workers, n = 0.0, 0
            for p in me.children(recursive=True):  # our own Ray instance only (the engine started it)
                try:
                    cmd = p.cmdline()
                    if cmd and cmd[0].startswith("ray::"):
                        workers += p.memory_info().rss / 2**20
                        n += 1
                except psutil.Error:
                    continue
            self.driver = max(self.driver, driver)
            self.workers = max(self.workers, workers)
            self.total = max(self.total, driver + workers)
            self.max_workers = max(self.max_workers, n)
            self._stop.wait(self.interval_s)


def _checkpoints(tmp: Path) -> tuple[Path, Path]:
    from ultralytics import YOLO

    from annotator.random_weights import write_random_sam

    sam = write_random_sam(tmp, "sam2_t")
    yolo = tmp / "yolo11n_random.pt"
    YOLO("yolo11n.yaml").save(str(yolo))
    return sam, yolo


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def bench_speed(n: int, repeats: int, tmp: Path, sam: Path) -> None:
    import logging

    import ray

    from annotator.synthetic import write_synthetic_dataset

    if not SHAPES_DETECTOR.is_file():
        sys.exit(f"{SHAPES_DETECTOR} is missing: run tools/train_shapes_detector.py")
    images = write_synthetic_dataset(tmp / "speed", n, seed=1, image_hw=(320, 320), labels=None) / "images"
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    t_init = time.perf_counter() - t0
    print(f"speed: {n} images 320x320, shapes detector + random sam2_t, cpu, batch 4; ray.init {t_init:.1f} s")
    runs = {"local": {"engine": "local"}, "ray fused": {"engine": "ray", "ray": {"fused": True}},
            "ray split": {"engine": "ray", "ray": {"fused": False}}}  # fmt: skip
    ips: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        for name, kw in runs.items():
            out = tmp / f"out_{r}_{name.replace(' ', '_')}"
            cfg = make_config(data=images, det_model=str(SHAPES_DETECTOR), sam_model=str(sam), device="cpu",
                              output_dir=out, format="both", batch_size=4, **kw)  # fmt: skip
            t0 = time.perf_counter()
            s = run(cfg)
            wall[name].append(time.perf_counter() - t0)
            ips[name].append(s.images_per_s)
            print(f"  repeat {r} {name:9s}: {s.images_per_s:.3f} images/s, wall {wall[name][-1]:.1f} s; {s.one_line()}")
    ray.shutdown()
    print("images/s median [min-max] / wall s median [min-max]:")
    for name in runs:
        print(f"  {name:9s}: {_spread(ips[name])} images/s, wall {_spread(wall[name])} s")


def bench_memory(sizes: list[int], tmp: Path, sam: Path, yolo: Path) -> None:
    print("memory: 64x64 noise PNGs, random yolo11n at imgsz 64 (no detections), cpu; peak RSS MiB, a process per run")
    rng = np.random.default_rng(0)
    for n in sizes:
        images = tmp / f"mem_{n}" / "images"
        images.mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(images / f"{i:05d}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        for engine in ("local", "ray"):
            out = tmp / f"mem_{n}_{engine}"
            cmd = [sys.executable, __file__, "_memory_run", engine, str(images), str(sam), str(yolo), str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not line:
                print(f"  {n} images {engine}: failed\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(line[-1])
            print(
                f"  {n:5d} images {engine:5s}: driver {r['driver']:6.0f}, ray workers {r['workers']:6.0f} "
                f"({r['processes']} processes), total {r['total']:6.0f} MiB; {r['images_per_s']:.1f} images/s, "
                f"wall {r['wall_s']:.1f} s"
            )


def _memory_run(engine: str, images: str, sam: str, yolo: str, out: str) -> None:
    """One run in this (fresh) process, its peak memory printed as one JSON line."""
    cfg = make_config(data=images, det_model=yolo, sam_model=sam, device="cpu", imgsz=64, output_dir=out,
                      format="both", engine=engine, ray={"num_cpus": 2})  # fmt: skip
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        s = run(cfg)
    print(json.dumps({"driver": mem.driver, "workers": mem.workers, "processes": mem.max_workers, "total": mem.total,
                      "images_per_s": s.images_per_s, "wall_s": time.perf_counter() - t0}))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_memory_run":
        _memory_run(*argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["speed", "memory", "all"])
    ap.add_argument("--n", type=int, default=12, help="images for the speed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 4000], help="folder sizes for the memory run")
    ns = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as d:
        tmp = Path(d)
        sam, yolo = _checkpoints(tmp / "weights")
        if ns.what in ("speed", "all"):
            bench_speed(ns.n, ns.repeats, tmp, sam)
        if ns.what in ("memory", "all"):
            bench_memory(ns.sizes, tmp, sam, yolo)


if __name__ == "__main__":
    main()
