"""Write random-weight SAM / SAM 2 checkpoints, for trying the pipeline on a machine that can't download.

The files are built by Ultralytics' own builders and saved under the names Ultralytics expects, so the
real loading path runs on them. Their masks are noise: use them for plumbing, tests and timing only,
never for labels you keep. On a machine with internet you don't need this: names download by themselves.

    python -m annotator.random_weights weights            # writes weights/sam2_t.pt
    python -m annotator.random_weights weights --models sam2_t mobile_sam
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

BUILDERS = {
    "sam2_t": "build_sam2_t",
    "sam2_s": "build_sam2_s",
    "sam2_b": "build_sam2_b",
    "mobile_sam": "build_mobile_sam",
    "sam_b": "build_sam_vit_b",
}


def write_random_sam(out_dir: Path, name: str = "sam2_t", seed: int = 0) -> Path:
    """Build ``name`` with random (seeded) weights and save its state dict as ``out_dir/<name>.pt``."""
    import torch
    from ultralytics.models.sam import build

    if name not in BUILDERS:
        raise ValueError(f"unknown SAM model {name!r}; choose one of {', '.join(BUILDERS)}")
    torch.manual_seed(seed)
    model = getattr(build, BUILDERS[name])(None)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m annotator.random_weights", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--models", nargs="+", default=["sam2_t"], choices=sorted(BUILDERS))
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(argv)
    for name in ns.models:
        target = ns.out_dir / f"{name}.pt"
        if target.exists():
            print(f"{target} exists, kept")
            continue
        path = write_random_sam(ns.out_dir, name, ns.seed)
        print(f"wrote {path} (RANDOM weights: masks are noise, for plumbing demos only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
