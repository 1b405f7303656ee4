"""Weight resolution and loading: real files, real Ultralytics builders, no downloads."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from annotator.errors import ModelLoadError, WeightsNotFoundError
from annotator.models import load_sam, resolve_models, resolve_weights, sam_architecture


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sam2_t.pt", ("sam2_t.pt", "sam2")),
        ("dir/my_sam2.1_b.pt", ("sam2.1_b.pt", "sam2")),
        ("mobile_sam.pt", ("mobile_sam.pt", "sam")),
        ("sam_h.pt", ("sam_h.pt", "sam")),
        ("sam3.pt", None),
        ("best.pt", None),
    ],
)
def test_sam_architecture(name, expected):
    if expected is None:
        with pytest.raises(ModelLoadError, match="must end with one of"):
            sam_architecture(name)
    else:
        assert sam_architecture(name) == expected


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wdir = tmp_path / "weights"
    wdir.mkdir()
    (wdir / "yolo11x.pt").write_bytes(b"x")
    assert resolve_weights("yolo11x.pt", role="det_model", weights_dir=wdir) == wdir / "yolo11x.pt"
    (tmp_path / "yolo11x.pt").write_bytes(b"y")  # a path as given wins over the weights dir
    assert resolve_weights("yolo11x.pt", role="det_model", weights_dir=wdir) == tmp_path / "yolo11x.pt"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("yolo11x.pt", "is not on this machine and it is offline"),
        ("sam2_b.pt", "--weights-dir / $ANNOTATOR_WEIGHTS_DIR"),
        ("yolo11xx.pt", "did you mean 'yolo11x.pt'"),
        ("runs/best.pt", "not found"),
    ],
)
def test_missing_weights_one_line(tmp_path, monkeypatch, name, fragment):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights(name, role="det_model")
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_wrong_architecture_file(tmp_path, sam2_t_ckpt):
    wrong = tmp_path / "mobile_sam.pt"
    shutil.copy(sam2_t_ckpt, wrong)  # SAM 2 weights under a MobileSAM name
    with pytest.raises(ModelLoadError, match="does not hold mobile_sam.pt weights"):
        load_sam(wrong, "mobile_sam.pt")


def test_resolve_models(sam2_t_ckpt, random_yolo_ckpt):
    m = resolve_models(str(random_yolo_ckpt), str(sam2_t_ckpt))
    assert (m.sam_name, m.sam_family) == ("sam2_t.pt", "sam2")
    assert m.det_path == random_yolo_ckpt


def test_cli_missing_weights_exits_2_with_one_line(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    (img / "a.png").write_bytes(b"")
    p = subprocess.run(
        [sys.executable, "-m", "annotator.cli", "annotate", str(img), "--det-model", "yolo11x.pt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "yolo11x.pt" in lines[0] and "offline" in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "labels").exists()  # stopped before any work


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--conf", "2"], "conf: Input should be less than or equal to 1"),
        (["--conf", "abc"], "invalid float value"),
        (["--format", "voc"], "invalid choice"),
        (["--imgsz", "100"], "multiple of 32"),
    ],
)
def test_cli_bad_arguments(tmp_path, args, fragment):
    img = tmp_path / "images"
    img.mkdir()
    p = subprocess.run(
        [sys.executable, "-m", "annotator.cli", "annotate", str(img), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert fragment in p.stderr
