"""Ultralytics' own calls of ``auto_annotate`` / ``yolo_bbox2segment``, run on our drop-in (issue 18, item 6).

``test_data_annotator`` is Ultralytics' test (``tests/test_python.py``) with only the import and the weights
changed: no downloads here, so ``WEIGHTS_DIR`` is a folder of local checkpoints (the project's shapes detector
and a random-weight MobileSAM, see ``tests/conftest.py``) and the Ultralytics test's ``yolo26n.pt`` is that
detector. Ultralytics has no test of ``yolo_bbox2segment``; its documented calls (docs "Simple utilities",
the function's docstring) are run here instead, on its split layout ``root/images/train`` +
``root/labels/train``, and the files land where Ultralytics' own function puts them (run side by side).
The other tests pin what Ultralytics accepts and we used to refuse: ``Path`` weights, integer and
``torch.device`` devices, ``imgsz`` as a list or not a multiple of 32 (rounded with a warning), and no
Ultralytics deprecation warning from our calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from annotator.config import make_config
from annotator.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def WEIGHTS_DIR(tmp_path_factory, shapes_detector, mobile_sam_ckpt) -> Path:  # noqa: N802 - Ultralytics' name
    """Ultralytics' WEIGHTS_DIR, with local files under the names its test uses."""
    d = tmp_path_factory.mktemp("weights")
    shutil.copy(shapes_detector, d / "yolo26n.pt")
    shutil.copy(mobile_sam_ckpt, d / "mobile_sam.pt")
    return d


def test_data_annotator(tmp_path, WEIGHTS_DIR):  # noqa: N803
    """Test automatic annotation of data using detection and segmentation models."""
    from annotator import auto_annotate
    from ultralytics.utils import ASSETS

    summary = auto_annotate(
        ASSETS,
        det_model=WEIGHTS_DIR / "yolo26n.pt",
        sam_model=WEIGHTS_DIR / "mobile_sam.pt",
        output_dir=tmp_path / "auto_annotate_labels",
    )
    # Ultralytics' test asserts nothing more than that the call succeeds; ours also checks what it wrote
    assert summary.failed == 0 and summary.annotated + summary.empty == 2
    assert sorted(p.name for p in (tmp_path / "auto_annotate_labels" / "labels").glob("*.txt")) == ["bus.txt", "zidane.txt"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("tiny") / "ds", 2, seed=3, image_hw=(96, 128),
                                   subdirs=("",), empty_fraction=0.0, n_objects=(1, 2))  # fmt: skip


@pytest.mark.parametrize(
    ("imgsz", "rounded", "warns"),
    [([96, 128], (96, 128), False), (100, 128, True)],
)
def test_imgsz_as_ultralytics_takes_it(tiny, tmp_path, WEIGHTS_DIR, imgsz, rounded, warns):  # noqa: N803
    from annotator import auto_annotate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = auto_annotate(tiny / "images", det_model=WEIGHTS_DIR / "yolo26n.pt", sam_model=WEIGHTS_DIR / "mobile_sam.pt",
                          device="cpu", imgsz=imgsz, output_dir=tmp_path / "out")  # fmt: skip
    ours = [str(w.message) for w in caught if "imgsz=" in str(w.message)]
    assert bool(ours) == warns, ours
    if warns:
        assert "multiple of the stride 32" in ours[0] and str(list(rounded) if isinstance(rounded, tuple) else rounded) in ours[0]
    assert s.failed == 0 and s.annotated + s.empty == 2
    import json

    settings = json.loads((tmp_path / "out" / "run_report.json").read_text())["settings"]
    assert settings["imgsz"] == (list(rounded) if isinstance(rounded, tuple) else rounded)


@pytest.mark.parametrize(
    ("device", "as_str"),
    [(0, "0"), (1, "1"), ("0", "0"), ("cuda:0", "cuda:0"), ("cpu", "cpu"), (None, ""), ("", "")],
)
def test_devices_as_ultralytics_takes_them(tiny, device, as_str):
    assert make_config(data=tiny / "images", device=device).device == as_str


@pytest.mark.parametrize(
    ("imgsz", "rounded", "warns"),
    [(160, 160, False), ((128, 128), 128, False), ("640", 640, False), ("[480, 640]", (480, 640), False),
     ([97, 129], (128, 160), True), (1, 32, True)],
)  # fmt: skip
def test_imgsz_values_without_a_run(tiny, imgsz, rounded, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert make_config(data=tiny / "images", imgsz=imgsz).imgsz == rounded
    assert any("multiple of the stride 32" in str(w.message) for w in caught) == warns


@pytest.mark.parametrize("imgsz", [0, -32, 16385, 10**30, [1, 2, 3], True, "big", [640.0, 640]])
def test_imgsz_refused_in_one_line(tiny, imgsz):
    """Sizes Ultralytics would bend into something (0 -> 32) or that would fill memory are refused: one line."""
    from annotator.errors import ConfigError

    with pytest.raises(ConfigError, match="imgsz") as e:
        make_config(data=tiny / "images", imgsz=imgsz)
    assert "\n" not in str(e.value)


def test_torch_device_and_path_weights(tiny, WEIGHTS_DIR):  # noqa: N803
    import torch

    cfg = make_config(data=tiny / "images", device=torch.device("cuda", 1), det_model=Path("a/b.pt"))
    assert cfg.device == "cuda:1" and cfg.det_model == "a/b.pt"
    assert make_config(data=tiny / "images", device=torch.device("cpu"), sam_model=WEIGHTS_DIR / "mobile_sam.pt").device == "cpu"


def _split_tree(root: Path) -> Path:
    """Ultralytics' split layout: root/images/train/*.jpg with box labels in root/labels/train/*.txt."""
    src = write_synthetic_dataset(root / "src", 2, seed=11, image_hw=(96, 128), subdirs=("",), empty_fraction=0.0,
                                  n_objects=(1, 2), labels="box")  # fmt: skip
    for kind in ("images", "labels"):
        (root / kind).mkdir(parents=True)
        shutil.move(str(src / kind), str(root / kind / "train"))
    return root


def test_yolo_bbox2segment_split_layout_lands_where_ultralytics_writes(tmp_path, sam2_t_ckpt):
    """``yolo_bbox2segment(im_dir="root/images/train")`` as documented: labels from root/labels/train, label files
    straight into Ultralytics' default save_dir (``labels-segment`` beside im_dir), the same file names."""
    from annotator import yolo_bbox2segment
    from ultralytics.data.converter import yolo_bbox2segment as ul_bbox2segment

    theirs, ours = _split_tree(tmp_path / "ul" / "root"), _split_tree(tmp_path / "ours" / "root")
    ul_bbox2segment(im_dir=str(theirs / "images" / "train"), save_dir=None, sam_model=str(sam2_t_ckpt))
    s = yolo_bbox2segment(im_dir=str(ours / "images" / "train"), save_dir=None, sam_model=sam2_t_ckpt,
                          sam_min_score=0.0)  # random weights: keep every mask  # fmt: skip

    def label_files(base: Path) -> list[str]:
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*.txt") if "labels" not in p.relative_to(base).parts[:2])

    want = label_files(tmp_path / "ul")
    assert want and all(p.startswith("root/images/labels-segment/") for p in want)  # Ultralytics' place
    assert label_files(tmp_path / "ours") == want
    assert s.failed == 0 and s.labels_dir == ours / "images" / "labels-segment" and s.annotated + s.empty == 2
    assert (ours / "images" / "labels-segment" / "data.yaml").is_file()  # ours also trains as is
    rows = [r for f in (ours / "images" / "labels-segment").glob("*.txt") for r in f.read_text().splitlines()]
    assert rows and all(len(r.split()) >= 7 for r in rows)  # box rows became polygon rows


def test_yolo_bbox2segment_documented_call_and_save_dir(tmp_path, mobile_sam_ckpt):
    """Ultralytics' docs: ``yolo_bbox2segment(im_dir="path/to/images", save_dir=None, sam_model=...)`` saves to
    ``labels-segment`` beside the images; a given save_dir gets the label files itself (not save_dir/labels/)."""
    from annotator import yolo_bbox2segment

    root = write_synthetic_dataset(tmp_path / "data", 2, seed=4, image_hw=(96, 128), subdirs=("",), empty_fraction=0.0,
                                   n_objects=(1, 2), labels="box")  # fmt: skip
    yolo_bbox2segment(im_dir=root / "images", save_dir=None, sam_model=mobile_sam_ckpt)
    assert sorted(p.name for p in (root / "labels-segment").glob("*.txt")) == ["0000.txt", "0001.txt"]
    yolo_bbox2segment(root / "images", tmp_path / "mine", mobile_sam_ckpt, None)
    assert sorted(p.name for p in (tmp_path / "mine").glob("*.txt")) == ["0000.txt", "0001.txt"]
    assert not (tmp_path / "mine" / "labels").exists()


def test_yolo_bbox2segment_labels_beside_the_images(tmp_path, sam2_t_ckpt):
    """No ``images`` part in im_dir: Ultralytics reads ``photos/a.txt`` for ``photos/a.jpg``; so do we."""
    from annotator import yolo_bbox2segment

    root = write_synthetic_dataset(tmp_path / "d", 1, seed=8, image_hw=(96, 128), subdirs=("",), empty_fraction=0.0,
                                   n_objects=(2, 2), labels="box")  # fmt: skip
    photos = tmp_path / "photos"
    shutil.copytree(root / "images", photos)
    shutil.copy(root / "labels" / "0000.txt", photos / "0000.txt")
    s = yolo_bbox2segment(photos, sam_model=sam2_t_ckpt, sam_min_score=0.0)
    assert s.failed == 0 and s.labels_dir == tmp_path / "labels-segment"
    rows = (tmp_path / "labels-segment" / "0000.txt").read_text().splitlines()
    assert rows and all(len(r.split()) >= 7 for r in rows)
    assert (photos / "0000.txt").read_text() == (root / "labels" / "0000.txt").read_text()  # input untouched


def test_cli_no_ultralytics_deprecation_warning_and_imgsz_rounded(tiny, tmp_path, WEIGHTS_DIR):  # noqa: N803
    """A real run with Ultralytics' logging on (YOLO_VERBOSE): none of its deprecation warnings ('half' was one on
    every run), and --imgsz 100 runs at 128 with one warning, as Ultralytics' own CLI would."""
    env = {**os.environ, "YOLO_VERBOSE": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "annotator", "annotate", str(tiny / "images"), "--det-model", str(WEIGHTS_DIR / "yolo26n.pt"),
         "--sam-model", str(WEIGHTS_DIR / "mobile_sam.pt"), "--device", "cpu", "--imgsz", "100",
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "deprecated" not in out.lower(), out
    assert "annotator: warning: imgsz=100 must be a multiple of the stride 32, updating to 128" in p.stderr
    assert "Traceback" not in out
