"""Settings validation: every bad value fails with one line naming the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotator.config import default_output_dir, load_config_file, make_config
from annotator.errors import ConfigError


@pytest.fixture()
def images(tmp_path) -> Path:
    d = tmp_path / "ds" / "images"
    d.mkdir(parents=True)
    (d / "a.jpg").write_bytes(b"")
    return d


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, None),
        ({"conf": 0.0, "iou": 1.0, "imgsz": 32, "max_det": 1, "classes": [0, 2]}, None),
        ({"conf": 1.5}, "conf: Input should be less than or equal to 1"),
        ({"iou": -0.1}, "iou: Input should be greater than or equal to 0"),
        ({"imgsz": [480, 640], "device": 0}, None),
        ({"imgsz": 0}, "imgsz: must be positive"),
        ({"imgsz": [1, 2, 3]}, "imgsz: must be an integer or [height, width]"),
        ({"device": [0, 1]}, "device: Input should be a valid string"),
        ({"max_det": 0}, "max_det: Input should be greater than or equal to 1"),
        ({"classes": [-1]}, "classes: class ids must be >= 0"),
        ({"classes": []}, "classes: must list at least one class id"),
        ({"classes": ["x"]}, "classes.0: Input should be a valid integer"),
        ({"format": "voc"}, "format: must be 'yolo', 'coco' or 'both'"),
        ({"conff": 0.3}, "unknown setting 'conff' (did you mean 'conf'?)"),
        ({"det_model": "  "}, "det_model: must name a weight file"),
        ({"coco_filename": "../x.json"}, "coco_filename: must be a plain file name"),
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
    ],
)
def test_validation_table(images, overrides, expected):
    if expected is None:
        cfg = make_config(data=images, **overrides)
        assert cfg.output_dir == images.parent / "labels"
        return
    with pytest.raises(ConfigError) as e:
        make_config(data=images, **overrides)
    msg = str(e.value)
    assert expected in msg
    assert "\n" not in msg


def test_missing_data_and_output_inside_input(tmp_path, images):
    with pytest.raises(ConfigError, match="does not exist"):
        make_config(data=tmp_path / "nope")
    with pytest.raises(ConfigError, match="inside the input folder"):
        make_config(data=images, output_dir=images / "out")
    with pytest.raises(ConfigError, match="inside the input folder"):
        make_config(data=images, output_dir=images)
    with pytest.raises(ConfigError, match="root"):
        make_config(data=images, output_dir="/")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        make_config(data=images, output_dir=tmp_path / "file.txt")


def test_default_output_dir(tmp_path):
    assert default_output_dir(Path("/d/images")) == Path("/d/labels")
    assert default_output_dir(Path("/d/photos")) == Path("/d/photos_auto_annotate_labels")
    assert default_output_dir(Path("/d/one.jpg")) == Path("/d/one_auto_annotate_labels")


def test_weights_dir_from_env(monkeypatch, images, tmp_path):
    monkeypatch.setenv("ANNOTATOR_WEIGHTS_DIR", str(tmp_path / "w"))
    assert make_config(data=images).weights_dir == tmp_path / "w"
    assert make_config(data=images, weights_dir=tmp_path / "x").weights_dir == tmp_path / "x"


def test_config_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("conf: 0.4\nformat: coco\n")
    assert load_config_file(p) == {"conf": 0.4, "format": "coco"}
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(p)
    p.write_text("a: [\n")
    with pytest.raises(ConfigError, match="line 2 column 1: expected valid YAML"):
        load_config_file(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "none.yaml")
