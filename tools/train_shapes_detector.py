"""Train the small sample detector on synthetic shapes (CPU, offline) and copy it into sample_data/models/.

Generates a YOLO detection dataset with :mod:`annotator.synthetic` (train and val splits, different seeds)
in a temp folder outside the repo, trains ``yolo11n`` from its yaml (no pretrained weights, nothing is
downloaded), then copies the optimizer-stripped ``best.pt`` to ``sample_data/models/shapes_yolo11n.pt``.

Run (about 15 min on 2 CPU cores)::

    nohup python tools/train_shapes_detector.py > /tmp/train_shapes.log 2>&1 &

Options: ``--epochs``, ``--n-train``, ``--n-val``, ``--workdir`` (default /tmp/shapes_ds), ``--out``;
``--init best.pt --train-seed 3000`` fine-tunes an earlier result on fresh images (same validation set).

The committed model: 30 epochs from scratch, then ``--init`` that result ``--epochs 12 --n-train 320
--train-seed 3000`` (see sample_data/README.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

# Never let Ultralytics touch the network or pip: set before it is imported.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from annotator.synthetic import SHAPE_NAMES, write_synthetic_dataset  # noqa: E402

MAX_MODEL_BYTES = 7 * 1024 * 1024


def build_dataset(
    workdir: Path, n_train: int, n_val: int, image_hw: tuple[int, int], train_seed: int = 1000
) -> Path:
    """Write ``workdir/{train,val}/{images,labels}`` (YOLO box labels) and ``workdir/data.yaml``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    for split, n, seed in (("train", n_train, train_seed), ("val", n_val, 2000)):
        write_synthetic_dataset(
            workdir / split, n, seed=seed, image_hw=image_hw, subdirs=("",), empty_fraction=0.05, labels="box"
        )
    names = "".join(f"  {k}: {v}\n" for k, v in SHAPE_NAMES.items())
    data_yaml = workdir / "data.yaml"
    data_yaml.write_text(f"path: {workdir}\ntrain: train/images\nval: val/images\nnames:\n{names}")
    return data_yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-val", type=int, default=60)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--train-seed", type=int, default=1000, help="seed of the training images")
    parser.add_argument("--init", type=Path, default=None, help="start from these weights (default: random)")
    parser.add_argument("--name", default="shapes_yolo11n", help="run name under --runs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/shapes_ds"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/shapes_runs"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "sample_data" / "models" / "shapes_yolo11n.pt")
    args = parser.parse_args()

    t0 = time.time()
    data_yaml = build_dataset(args.workdir, args.n_train, args.n_val, (args.imgsz, args.imgsz), args.train_seed)
    print(f"dataset written to {args.workdir} in {time.time() - t0:.1f}s", flush=True)

    from ultralytics import YOLO

    # Built from the yaml: random init, no download; or an earlier result to fine-tune.
    model = YOLO(str(args.init)) if args.init else YOLO("yolo11n.yaml")
    model.train(
        data=str(data_yaml),
        imgsz=args.imgsz,
        epochs=args.epochs,
        batch=16,
        workers=2,
        device="cpu",
        plots=False,
        amp=False,
        val=True,
        pretrained=str(args.init) if args.init else False,  # False: random init, nothing downloaded
        project=str(args.runs),
        name=args.name,
        exist_ok=True,
        seed=0,
        deterministic=True,
        verbose=True,
    )
    trainer = model.trainer
    best = Path(trainer.best)
    if not best.exists():
        raise SystemExit(f"training finished but {best} is missing; see the log above")
    size = best.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise SystemExit(f"{best} is {size / 1e6:.1f} MB, over the 7 MB limit: strip the optimizer first")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, args.out)

    metrics = YOLO(str(args.out)).val(
        data=str(data_yaml), imgsz=args.imgsz, batch=16, device="cpu", plots=False, workers=0, verbose=False
    )
    print(f"class names: {YOLO(str(args.out)).names}")
    print(f"model: {args.out} ({size / 1e6:.2f} MB)")
    print(f"val mAP50: {metrics.box.map50:.4f}  mAP50-95: {metrics.box.map:.4f}")
    print(f"total time: {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
