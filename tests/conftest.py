"""Shared fixtures: offline Ultralytics, checkpoints built by the tests, synthetic image folders.

No test downloads anything: SAM 2 / MobileSAM checkpoints are built from Ultralytics' own builders with
random (seeded) weights and saved under the file names Ultralytics expects; the detector is the small
YOLO the project trained on its synthetic shapes (``sample_data/models/shapes_yolo11n.pt``), or a
random ``yolo11n.yaml`` model where detections are not needed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before anything imports ultralytics: never download, never pip-install, settings in a temp dir.
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "false"
os.environ["YOLO_VERBOSE"] = "false"
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="annotator-yolo-cfg-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPES_DETECTOR = REPO / "sample_data" / "models" / "shapes_yolo11n.pt"
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


def _save_sam(builder_name: str, path: Path, seed: int = 0, score_spread: float | None = None) -> Path:
    import torch
    from ultralytics.models.sam import build

    torch.manual_seed(seed)
    model = getattr(build, builder_name)(None)
    if score_spread is not None:
        head = model.sam_mask_decoder.iou_prediction_head.layers[-1]
        with torch.no_grad():
            head.weight.mul_(score_spread)
            head.bias.fill_(float(score_spread) * 0.0)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def sam2_t_ckpt(ckpt_dir) -> Path:
    """Random-weight SAM 2-tiny, saved as ``sam2_t.pt`` (the real loading path resolves the name)."""
    return _save_sam("build_sam2_t", ckpt_dir / "sam2_t.pt")


@pytest.fixture(scope="session")
def mobile_sam_ckpt(ckpt_dir) -> Path:
    return _save_sam("build_mobile_sam", ckpt_dir / "mobile_sam.pt")


@pytest.fixture(scope="session")
def random_yolo_ckpt(ckpt_dir) -> Path:
    """A random-weight yolo11n built from its YAML (detects nothing useful; plumbing only)."""
    from ultralytics import YOLO

    path = ckpt_dir / "yolo11n_random.pt"
    YOLO("yolo11n.yaml").save(str(path))
    return path


@pytest.fixture(scope="session")
def shapes_detector() -> Path:
    """The yolo11n the project trained on its synthetic shapes (circle, rectangle, triangle)."""
    assert SHAPES_DETECTOR.is_file(), f"{SHAPES_DETECTOR} is missing: run tools/train_shapes_detector.py"
    return SHAPES_DETECTOR


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
