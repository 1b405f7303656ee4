"""Every output layout is a dataset Ultralytics trains on as is: its own dataset loader finds every label of
every labelled image (and only those), in each layout the tool accepts, with ``save_conf`` on; one tiny
training epoch runs on the README's sample job output. Each shipped config yields label files the trainer
accepts.

Random SAM weights give noisy masks: these tests check what the trainer reads, not mask quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from annotator.api import run
from annotator.config import load_config_file, make_config
from tests.test_incremental import write_images

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """``root/images/{a,b,c}.png`` (one in ``sub/``), a broken image, and a ``.txt`` list of two of them."""
    root = tmp_path_factory.mktemp("trainable")
    images = root / "images"
    write_images(images, [21, 22, 23])
    (images / "broken.png").write_bytes(b"not a PNG")
    (images / "list.txt").write_text("img21.png\nsub/img22.png\nbroken.png\n")
    return root


def ultralytics_dataset(data_yaml: Path) -> tuple[list[str], dict, object]:
    """Ultralytics' own loader on ``data_yaml``, every split together (train, val, test; a split listed twice,
    val = train, is read once): (image files it found, cache results, dataset)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset, load_dataset_cache_file

    data = check_det_dataset(str(data_yaml))
    paths = list(dict.fromkeys(data[k] for k in ("train", "val", "test") if data.get(k)))
    ds = YOLODataset(img_path=paths, data=data, task="segment", imgsz=64, augment=False, hyp=get_cfg())
    cache = load_dataset_cache_file(Path(ds.label_files[0]).parent.with_suffix(".cache"))
    nf, nm, ne, nc, n = cache["results"]
    return ds.im_files, {"found": nf, "missing": nm, "empty": ne, "corrupt": nc, "images": n}, ds


def _rows(label: Path) -> int:
    return len(label.read_text().splitlines())


@pytest.mark.parametrize(
    "layout", ["sibling", "other-folder", "txt-list", "one-image"], ids=lambda s: s.replace("-", "_")
)
def test_every_layout_trains_as_is(layout, tree, tmp_path, shapes_detector, sam2_t_ckpt):
    root = tmp_path / "copy"
    shutil.copytree(tree, root)  # each layout on its own copy: the sibling layout writes beside images/
    data = {
        "sibling": root / "images",
        "other-folder": root / "images",
        "txt-list": root / "images" / "list.txt",
        "one-image": root / "images" / "sub" / "img22.png",
    }[layout]
    out = None if layout == "sibling" else tmp_path / "out"
    s = run(make_config(data=data, det_model=str(shapes_detector), sam_model=str(sam2_t_ckpt), device="cpu",
                        output_dir=out, sam_min_score=0.0, save_conf=True, format="both"))  # fmt: skip
    assert s.instances > 0
    out = s.output_dir
    labelled = {"sibling": 3, "other-folder": 3, "txt-list": 2, "one-image": 1}[layout]
    assert s.annotated + s.empty == labelled

    files, results, ds = ultralytics_dataset(s.data_yaml)
    # the loader sees exactly the labelled images: the broken one is not read as a background image
    assert len(files) == labelled and not any("broken" in f for f in files)
    assert results["missing"] == 0 and results["corrupt"] == 0 and results["found"] == labelled  # empty ones too
    # and every row of every label file, as polygons (segments), none dropped as corrupt
    label_files = sorted(s.labels_dir.rglob("*.txt"))
    assert sum(_rows(p) for p in label_files) == sum(len(lb["segments"]) for lb in ds.labels) == s.instances
    if layout == "sibling":
        assert s.labels_dir == out == root / "labels" and not (out / "images").exists()
    else:
        assert s.labels_dir == out / "labels"
        links = sorted(p for p in (out / "images").rglob("*") if p.is_symlink())
        assert len(links) == labelled and all(p.resolve().is_file() for p in links)
    # confidences kept beside the labels, one line per label row
    scores = (out / "scores.csv").read_text().splitlines()
    assert len(scores) == 1 + s.instances and s.scores_csv == out / "scores.csv"


@pytest.mark.slow
def test_one_training_epoch_on_the_sample_job_output(tmp_path, shapes_detector, sam2_t_ckpt):
    """The README's sample config, as a user runs it (relative paths resolved from the config file), then
    ``YOLO("yolo11n-seg.yaml").train(data=<our data.yaml>)`` for one epoch."""
    from ultralytics import YOLO

    settings = load_config_file(REPO / "configs" / "sample.yaml")
    settings.update(sam_model=str(sam2_t_ckpt), output_dir=tmp_path / "sample", sam_min_score=0.0)
    s = run(make_config(**settings))
    assert s.images_seen == 8 and s.instances > 0
    model = YOLO("yolo11n-seg.yaml")
    model.train(data=str(s.data_yaml), epochs=1, imgsz=64, batch=4, device="cpu", workers=0, plots=False,
                project=str(tmp_path / "train"), name="t", exist_ok=True, amp=False, verbose=False)  # fmt: skip
    trainer = model.trainer
    assert trainer is not None and trainer.epoch == 0
    # the default split (val 0.1) puts the sample's 0001.jpg in val: training validates on an image it never saw
    train_files, val_files = trainer.train_loader.dataset.im_files, trainer.test_loader.dataset.im_files
    assert val_files == [str(tmp_path / "sample" / "images" / "0001.jpg")]  # the link to sample_data's image
    assert len(train_files) + len(val_files) == s.annotated + s.empty and not set(train_files) & set(val_files)
    assert sum(len(lb["segments"]) for d in (trainer.train_loader.dataset, trainer.test_loader.dataset)
               for lb in d.labels) == s.instances  # fmt: skip
    assert (tmp_path / "train" / "t" / "weights" / "last.pt").is_file()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_writes_trainable_labels(name, tree, tmp_path, shapes_detector, sam2_t_ckpt):
    """Each configs/*.yaml, with its models swapped for local ones and the engine kept local, gives label
    files the trainer accepts (no extra columns) and a data.yaml its loader reads."""
    settings = load_config_file(REPO / "configs" / name)
    for key in ("ray", "weights_sha256", "weights_dir"):
        settings.pop(key, None)
    root = tmp_path / "d"
    shutil.copytree(tree, root)
    (root / "images" / "broken.png").unlink()
    settings.update(data=root / "images", output_dir=tmp_path / "out", det_model=str(shapes_detector),
                    sam_model=str(sam2_t_ckpt), device="cpu", engine="local", sam_min_score=0.0)  # fmt: skip
    s = run(make_config(**settings))
    if s.data_yaml is None:
        pytest.fail(f"{name} writes no YOLO labels: format is {settings.get('format')!r}")
    doc = yaml.safe_load(s.data_yaml.read_text())
    # the default split: img21/img23 train, sub/img22 val (split: in annotator/splits.py hashes the path)
    assert "path" not in doc and doc["train"] == "train.list" and doc["val"] == "val.list"
    files, results, _ = ultralytics_dataset(s.data_yaml)
    assert len(files) == 3 and results["corrupt"] == 0 and results["missing"] == 0
    for label in s.labels_dir.rglob("*.txt"):
        for row in label.read_text().splitlines():
            assert (len(row.split()) - 1) % 2 == 0, f"{name}: a row with an extra column: {row[:60]}"
