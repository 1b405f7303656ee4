"""The GPU check on a machine shaped like a bare GPU host: a venv with only torch, torchvision, numpy and opencv
(linked from this venv, nothing downloaded), everything else installed from ``tools/gpu_wheels.sh``'s folder
with ``pip install --no-index``; then ``python -m benchmarks.gpu_check --device cpu --tiny`` must write its JSON
and Markdown rows, without importing Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bare_venv import make_bare_venv
from benchmarks.gpu_check import idle_gaps

REPO = Path(__file__).resolve().parents[1]
WHEELS = Path(os.environ.get("ANNOTATOR_GPU_WHEELS", Path.home() / ".cache" / "annotator-gpu-wheels"))


def _wheels() -> Path:
    """The wheel folder (cached across runs; rebuilt when the script's package list changed)."""
    stamp = WHEELS / ".script"
    script = (REPO / "tools" / "gpu_wheels.sh").read_text()
    if not stamp.exists() or stamp.read_text() != script:
        subprocess.run(["bash", str(REPO / "tools" / "gpu_wheels.sh"), str(WHEELS)], check=True)
        stamp.write_text(script)
    return WHEELS


def test_idle_gaps_merges_overlapping_kernels():
    from types import SimpleNamespace as N

    ev = [N(device_type="CUDA", start=0, end=10), N(device_type="CUDA", start=5, end=20),
          N(device_type="CPU", start=20, end=300), N(device_type="CUDA", start=220, end=230)]  # fmt: skip
    g = idle_gaps(ev)
    assert g["kernels"] == 3 and g["gaps_us_largest"] == [200.0] and g["gaps_over_100us"] == 1
    assert g["busy_share"] == round(30 / 230, 4)  # merged [0, 20] and [220, 230]
    assert idle_gaps([N(device_type="CPU", start=0, end=1)])["kernels"] == 0


@pytest.mark.slow
def test_gpu_check_runs_on_a_bare_venv(tmp_path):
    wheels = _wheels()
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    assert size < 64 * 2**20, f"wheel folder {size / 2**20:.1f} MiB"
    py = make_bare_venv(tmp_path / "venv")
    bare = subprocess.run([str(py), "-c", "import ultralytics"], capture_output=True, text=True)
    assert bare.returncode != 0, "the bare venv must not see this venv's ultralytics"
    reqs = (wheels / "requirements.txt").read_text().split()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", "--no-deps",
                    "--find-links", str(wheels), *reqs], check=True)  # fmt: skip
    out = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(REPO), YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false", OMP_NUM_THREADS="1",
               YOLO_CONFIG_DIR=str(tmp_path / "yolo_cfg"))  # fmt: skip
    r = subprocess.run([str(py), "-m", "benchmarks.gpu_check", "--out", str(out), "--device", "cpu", "--tiny"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["ray_imported"] is False
    rows = {(x["batch"], x["precision"], x["compile"]): x for x in rep["rows"]}
    assert set(rows) == {(2, "bf16", False), (2, "fp32", False)}
    for x in rows.values():
        assert "error" not in x and "skipped" not in x, x
        assert x["ours_images_per_s"] > 0 and x["ultralytics_images_per_s"] > 0
        assert 0 < x["model_thread_busy"] <= 1.0 and x["boxes"] == 2 * 2
    syncs = {s["prompts"]: s for s in rep["syncs"]}
    assert syncs["detector"]["syncs_per_batch_max"] <= 2 and syncs["boxes"]["syncs_per_batch_max"] <= 2
    assert rep["mask_iou"]["instances"] >= 1 and rep["mask_iou"]["mean"] == pytest.approx(1.0)  # CPU: no bf16
    assert rep["profile"]["kernels"] == 0 and rep["profile"]["top_ops"]
    md = (out / "gpu_check.md").read_text()
    assert "| 2 | bf16 | False |" in md and "| 2 | fp32 | False |" in md and "host syncs per batch" in md
