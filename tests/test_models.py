"""Weight resolution and loading: real files, real Ultralytics builders, no downloads."""

from __future__ import annotations

import os
import re
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
        (["--conf", "abc"], "argument --conf: expected a number, found 'abc'"),
        (["--format", "voc"], "invalid choice"),
        (["--imgsz", "0"], "imgsz: must be positive"),
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


# ------------------------------------------------------------------------------------------- safe loading
class _Payload:
    """Pickles as ``open(marker, "w")``: creates a file when unpickled (harmless proof that code ran)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemPayload(_Payload):
    """Pickles as ``os.system("echo > marker")``: the classic malicious checkpoint (a shell command)."""

    def __reduce__(self):
        import shlex

        return (os.system, (f"echo > {shlex.quote(self.marker)}",))


_PAYLOADS = {"open": (_Payload, r"(builtins|io)\.open"), "os.system": (_SystemPayload, r"(posix|nt)\.system")}


def _with_payload(src, dst, marker, *, key="payload", payload=_Payload, **save_kw):
    """``src``'s checkpoint with one more entry that runs code when unpickled, saved with ``torch.save``."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    ckpt = ckpt if isinstance(ckpt, dict) and "model" in ckpt else {"model": ckpt}
    ckpt[key] = payload(marker)
    torch.save(ckpt, dst, **save_kw)
    return dst


def _load(role, path, **kw):
    from annotator.models import load_yolo

    return load_yolo(path, **kw) if role == "det_model" else load_sam(path, "sam2_t.pt", **kw)


def test_genuine_checkpoints_load_with_the_safe_default(tmp_path, shapes_detector, sam2_t_ckpt, mobile_sam_ckpt):
    from ultralytics import YOLO

    from annotator.models import load_yolo

    YOLO("yolo11n-seg.yaml").save(str(tmp_path / "seg.pt"))
    YOLO("yolo11n.yaml").save(str(tmp_path / "det.pt"))
    assert load_yolo(shapes_detector).task == "detect"
    assert load_yolo(tmp_path / "seg.pt").task == "segment" and load_yolo(tmp_path / "det.pt").task == "detect"
    assert type(load_sam(sam2_t_ckpt, "sam2_t.pt")).__name__ == "SAM2Model"
    assert type(load_sam(mobile_sam_ckpt, "mobile_sam.pt")).__name__ == "SAMModel"


@pytest.mark.parametrize("payload", sorted(_PAYLOADS))
@pytest.mark.parametrize("role", ["det_model", "sam_model"])
def test_pickled_code_never_runs_without_trust(role, payload, tmp_path, shapes_detector, sam2_t_ckpt):
    from ultralytics.nn import tasks

    marker = tmp_path / "code-ran"
    kind, offending = _PAYLOADS[payload]
    src, bad = (shapes_detector, tmp_path / "best.pt") if role == "det_model" else (sam2_t_ckpt, tmp_path / "sam2_t.pt")
    _with_payload(src, bad, marker, payload=kind)
    safe_load_before = tasks.SAFE_LOAD
    with pytest.raises(ModelLoadError) as e:
        _load(role, bad)
    msg = str(e.value)
    assert re.fullmatch(
        rf"{role} '.*' holds Python objects outside the safe allow-list \({offending}\): load it only if you trust "
        r"it, with --trust-weights \(trust_weights: true\)",
        msg,
    ), msg
    assert not marker.exists()  # nothing in the file ran, not even to name the global
    assert tasks.SAFE_LOAD == safe_load_before  # Ultralytics' process-wide flag is put back


@pytest.mark.parametrize("fmt", ["legacy", "protocol4"])
@pytest.mark.parametrize("role", ["det_model", "sam_model"])
def test_other_pickle_layouts_are_refused_naming_the_global(role, fmt, tmp_path, shapes_detector, sam2_t_ckpt):
    """The pre-1.6 torch.save format and protocol-4 pickles (STACK_GLOBAL) are refused as well, the global named
    from the pickle's opcodes (torch's own scan reads neither)."""
    marker = tmp_path / "code-ran"
    src, bad = (shapes_detector, tmp_path / "best.pt") if role == "det_model" else (sam2_t_ckpt, tmp_path / "sam2_t.pt")
    save_kw = {"_use_new_zipfile_serialization": False} if fmt == "legacy" else {"pickle_protocol": 4}
    _with_payload(src, bad, marker, payload=_SystemPayload, **save_kw)
    with pytest.raises(ModelLoadError, match=r"outside the safe allow-list \((posix|nt)\.system\): .*--trust-weights"):
        _load(role, bad)
    assert not marker.exists()


@pytest.mark.parametrize("role", ["det_model", "sam_model"])
def test_trust_takes_the_unrestricted_path(role, tmp_path, shapes_detector, sam2_t_ckpt):
    """trust=True unpickles everything (the payload runs: that is what trust means) and the model still loads."""
    marker = tmp_path / "code-ran"
    src, bad = (shapes_detector, tmp_path / "best.pt") if role == "det_model" else (sam2_t_ckpt, tmp_path / "sam2_t.pt")
    _with_payload(src, bad, marker)
    model = _load(role, bad, trust=True)
    assert marker.exists()
    assert (model.task == "detect") if role == "det_model" else type(model).__name__ == "SAM2Model"


def test_trust_weights_setting_reaches_the_loaders(tmp_path, shapes_detector, sam2_t_ckpt):
    """Through the real CLI: refused with exit 2 and one line; accepted with --trust-weights."""
    import cv2
    import numpy as np

    data = tmp_path / "in"
    data.mkdir()
    cv2.imwrite(str(data / "a.png"), np.zeros((64, 64, 3), np.uint8))
    bad = _with_payload(shapes_detector, tmp_path / "best.pt", tmp_path / "code-ran")
    cmd = [sys.executable, "-m", "annotator", "annotate", str(data), "--det-model", str(bad), "--sam-model",
           str(sam2_t_ckpt), "--device", "cpu", "--output-dir", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--trust-weights" in p.stderr
    assert not (tmp_path / "code-ran").exists()
    p = subprocess.run([*cmd, "--trust-weights"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("role", ["det_model", "sam_model"])
def test_truncated_checkpoint_is_named_as_such(role, tmp_path, shapes_detector, sam2_t_ckpt):
    src = shapes_detector if role == "det_model" else sam2_t_ckpt
    cut = tmp_path / ("best.pt" if role == "det_model" else "sam2_t.pt")
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    for trust in (False, True):  # checked before any unpickling, in both modes
        with pytest.raises(ModelLoadError) as e:
            _load(role, cut, trust=trust)
        msg = str(e.value)
        assert re.fullmatch(rf"{role} '.*' is a truncated or corrupt checkpoint \(.*cut short.*\); copy or .*", msg), msg
        assert "does not hold" not in msg and "\n" not in msg


def _corrupt_middle(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(1000) + data[mid + 1000 :]


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda data: b"", "the file is empty"),
        (_corrupt_middle, "Bad CRC-32"),  # torch.load itself would read these zeroed weights without a word
        (lambda data: b"\x89PNG\r\n\x1a\n" + bytes(100), "not a PyTorch checkpoint"),
        (lambda data: b"<html>404 Not Found</html>", "not a PyTorch checkpoint"),
    ],
    ids=["empty", "crc", "png", "html"],
)
@pytest.mark.parametrize("role", ["det_model", "sam_model"])
def test_damaged_or_foreign_files_are_named_as_such(role, damage, fragment, tmp_path, shapes_detector, sam2_t_ckpt):
    src = shapes_detector if role == "det_model" else sam2_t_ckpt
    bad = tmp_path / ("best.pt" if role == "det_model" else "sam2_t.pt")
    bad.write_bytes(damage(src.read_bytes()))
    with pytest.raises(ModelLoadError, match=rf"^{role} .* is a truncated or corrupt checkpoint \(.*{fragment}"):
        _load(role, bad)


def test_detector_files_other_than_pt_need_trust(tmp_path, shapes_detector):
    """Ultralytics loads any other suffix (exports, .pth) by its own means, outside the allow-list loader."""
    from annotator.models import load_yolo

    other = tmp_path / "best.pth"
    shutil.copy(shapes_detector, other)
    with pytest.raises(ModelLoadError, match=r"is not a \.pt checkpoint.*--trust-weights"):
        load_yolo(other)


def test_a_sam_file_given_as_detector_says_so(sam2_t_ckpt):
    from annotator.models import load_yolo

    with pytest.raises(ModelLoadError, match=r"holds no Ultralytics YOLO model"):
        load_yolo(sam2_t_ckpt)
