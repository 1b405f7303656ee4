"""Splits (issue 21 item 5): ``data.yaml`` gets train / val (/ test) lists, each image in a split fixed by its
path relative to ``data`` (a hash; a video's frames with their video; ``train/ val/ test/`` folders keep their
split). Adding images never moves one; a new fraction rebuilds the lists without running a model; Ultralytics'
own loader reads every split, non-empty, in both output layouts.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import yaml

from annotator.api import run
from annotator.config import make_config
from annotator.errors import ConfigError
from annotator.splits import SPLITS, SplitSettings, folder_split, path_fraction, split_of
from annotator.synthetic import make_shapes_image
from tests.test_incremental import cfg_for
from tests.test_trainable import ultralytics_dataset

# -- the assignment, as a pure function ---------------------------------------------------------------------


def test_fractions_are_roughly_honoured_on_400_paths():
    paths = [f"site{i % 7}/cam{i % 3}/frame_{i:05d}.jpg" for i in range(400)]
    s = SplitSettings(val=0.1, test=0.2)
    counts = {k: 0 for k in SPLITS}
    for p in paths:
        counts[split_of(p, s)] += 1
    # binomial: sd of val is 6 images, of test 8; 3.5 sd either side
    assert 19 <= counts["val"] <= 61 and 52 <= counts["test"] <= 108 and counts["train"] == 400 - counts["val"] - counts["test"]
    # val 0 and test 0: everything trains
    assert {split_of(p, SplitSettings(val=0.0)) for p in paths} == {"train"}


def test_the_split_depends_on_the_path_alone():
    # pinned: the same in every process, on every machine, whatever PYTHONHASHSEED (a change here moves images)
    assert abs(path_fraction("img21.png") - 0.6993) < 1e-3 and abs(path_fraction("sub/img22.png") - 0.0280) < 1e-3
    assert path_fraction("sub\\img22.png") == path_fraction("sub/img22.png")  # a Windows rel path: same image
    s = SplitSettings(val=0.3, test=0.1)
    first = {f"a/{i}.jpg": split_of(f"a/{i}.jpg", s) for i in range(50)}
    more = {f"a/{i}.jpg": split_of(f"a/{i}.jpg", s) for i in range(500)}  # the folder grew tenfold
    assert all(more[p] == first[p] for p in first)
    # a larger val fraction only moves train images into val/test, never val images out of val
    bigger = SplitSettings(val=0.5, test=0.1)
    assert all(split_of(p, bigger) == "val" for p, k in more.items() if k == "val")


@pytest.mark.parametrize(
    ("rel", "want"),
    [("train/a.jpg", "train"), ("val/x/a.jpg", "val"), ("images/val/a.jpg", "val"), ("Valid/a.jpg", "val"),
     ("test/a.jpg", "test"), ("images/train/a.jpg", "train"), ("a.jpg", None), ("cats/val/a.jpg", None),
     ("val.jpg", None), ("images/a.jpg", None), ("trains/a.jpg", None)],
)  # fmt: skip
def test_pre_split_folders(rel, want):
    assert folder_split(rel) == want
    if want is not None:  # whatever the fractions
        assert split_of(rel, SplitSettings(val=0.0)) == split_of(rel, SplitSettings(val=0.9, test=0.05)) == want


@pytest.mark.parametrize(
    ("split", "msg"),
    [({"val": 1.0}, "less than 1"), ({"val": -0.1}, "greater than or equal to 0"), ({"val": 0.6, "test": 0.4}, "below 1"),
     ({"val_from": "reviewed"}, "unknown setting 'split.val_from'"), ({"val": "a lot"}, "split.val")],
)  # fmt: skip
def test_bad_split_settings_are_refused_in_one_line(split, msg, tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ConfigError) as e:
        make_config(data=tmp_path / "images", split=split)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_cli_flags_fill_the_split_section(tmp_path):
    from annotator.cli import _settings, build_parser

    (tmp_path / "images").mkdir()
    ns = build_parser().parse_args(["annotate", str(tmp_path / "images"), "--val-fraction", "0.2", "--test-fraction", "0.05"])
    cfg = make_config(**_settings(ns))
    assert cfg.split == SplitSettings(val=0.2, test=0.05)
    assert make_config(data=tmp_path / "images").split == SplitSettings(val=0.1, test=0.0)  # the default
    with pytest.raises(SystemExit) as e:  # not a number: argparse's one line, exit 2
        build_parser().parse_args(["annotate", str(tmp_path / "images"), "--val-fraction", "nan"])
    assert e.value.code == 2


def test_cli_refuses_a_fraction_of_one_in_one_line(tmp_path):
    """The real command: refused at the boundary, before any model is looked up."""
    import subprocess
    import sys

    (tmp_path / "images").mkdir()
    p = subprocess.run([sys.executable, "-m", "annotator", "annotate", str(tmp_path / "images"), "--val-fraction", "1",
                        "--det-model", "none.pt"], capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert p.returncode == 2 and "split.val" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "labels").exists()


# -- written datasets -----------------------------------------------------------------------------------------


def write_small(folder: Path, rels: list[str]) -> None:
    for i, rel in enumerate(rels):
        image, _ = make_shapes_image(100 + i, (64, 64), n_objects=(1, 2))
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), image)


def read_lists(data_yaml: Path) -> dict[str, list[str]]:
    """split -> the lines of the list data.yaml names for it (val: the train list when val = train)."""
    doc = yaml.safe_load(data_yaml.read_text())
    out = {}
    for k in SPLITS:
        if k in doc:
            target = data_yaml.parent / doc[k]
            assert target.is_file(), f"{k}: {doc[k]} is not a list file"
            out[k] = target.read_text().splitlines()
    return out


def _tail(line: str, marker: str) -> str:
    return line.split(marker, 1)[1]


NAMES = [f"img{i}.png" for i in range(8)] + [f"sub/img{i}.png" for i in range(8, 12)]


@pytest.mark.parametrize("layout", ["sibling", "dataset"])
def test_lists_are_stable_as_the_folder_grows_and_every_split_loads(layout, tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    images = tmp_path / "ds" / "images"
    write_small(images, NAMES[:8])
    out = None if layout == "sibling" else tmp_path / "out"
    kw = dict(sam_min_score=0.0, split={"val": 0.25, "test": 0.15})
    s1 = run(cfg_for(images, out, random_yolo_ckpt, sam2_t_ckpt, **kw))
    assert s1.annotated + s1.empty == 8
    doc = yaml.safe_load(s1.data_yaml.read_text())
    assert (doc["train"], doc["val"], doc["test"]) == ("train.list", "val.list", "test.list") and "path" not in doc
    marker = "/images/"
    lists1 = read_lists(s1.data_yaml)
    where1 = {_tail(line, marker): k for k, lines in lists1.items() for line in lines}
    assert sorted(where1) == sorted(NAMES[:8])  # every labelled image in exactly one split
    assert where1 == {rel: split_of(rel, SplitSettings(val=0.25, test=0.15)) for rel in NAMES[:8]}
    assert all(lists1[k] for k in SPLITS)  # these 8 names fill every split
    assert s1.splits == {k: len(lists1[k]) for k in SPLITS}  # the summary (and run_report.json) count them
    if layout == "dataset":  # relative entries: the dataset folder can move
        assert all(line.startswith("./images/") for lines in lists1.values() for line in lines)
    else:
        assert all(Path(line).is_absolute() for lines in lists1.values() for line in lines)

    # Ultralytics reads each split, non-empty, with every label
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(s1.data_yaml))
    for k in SPLITS:
        ds = YOLODataset(img_path=data[k], data=data, task="segment", imgsz=64, augment=False, hyp=get_cfg())
        assert len(ds.im_files) == len(lists1[k]) > 0 and len(ds.labels) == len(ds.im_files)
    files, results, _ = ultralytics_dataset(s1.data_yaml)
    assert len(files) == 8 and results["missing"] == 0 and results["corrupt"] == 0

    # the folder grows: nobody moves; the new images are hashed likewise
    write_small(images, NAMES[8:])
    s2 = run(cfg_for(images, out, random_yolo_ckpt, sam2_t_ckpt, **kw))
    assert s2.images_seen == 4 and s2.unchanged == 8
    where2 = {_tail(line, marker): k for k, lines in read_lists(s2.data_yaml).items() for line in lines}
    assert sorted(where2) == sorted(NAMES) and all(where2[rel] == k for rel, k in where1.items())


def test_a_new_fraction_rebuilds_the_lists_without_running_a_model(tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    images = tmp_path / "ds" / "images"
    write_small(images, NAMES)
    out = tmp_path / "out"
    s1 = run(cfg_for(images, out, random_yolo_ckpt, sam2_t_ckpt, sam_min_score=0.0, split={"val": 0.0}))
    # val 0: as before the setting existed: the dataset validates on its training images, no split list
    doc = yaml.safe_load(s1.data_yaml.read_text())
    assert doc["train"] == doc["val"] == "images" and "test" not in doc
    assert not any((out / f"{k}.list").exists() for k in SPLITS) and s1.splits == {}
    labels_before = {p: p.read_bytes() for p in (out / "labels").rglob("*.txt")}
    mtimes = {p: p.stat().st_mtime_ns for p in labels_before}

    s2 = run(cfg_for(images, out, random_yolo_ckpt, sam2_t_ckpt, sam_min_score=0.0, split={"val": 0.3, "test": 0.2}))
    assert s2.images_seen == 0 and s2.annotated == 0 and s2.unchanged == len(NAMES)  # no model ran
    lists = read_lists(s2.data_yaml)
    assert set(lists) == set(SPLITS) and all(lists.values())
    assert {p: p.read_bytes() for p in labels_before} == labels_before  # label files untouched
    assert {p: p.stat().st_mtime_ns for p in labels_before} == mtimes

    # back to val 0: the split lists this tool wrote are removed, data.yaml is as before
    s3 = run(cfg_for(images, out, random_yolo_ckpt, sam2_t_ckpt, sam_min_score=0.0, split={"val": 0.0}))
    assert s3.images_seen == 0 and yaml.safe_load(s3.data_yaml.read_text()) == doc
    assert not any((out / f"{k}.list").exists() for k in SPLITS)


def test_a_pre_split_tree_keeps_its_split(tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    """``images/train``, ``images/val``, ``images/test`` (Ultralytics' layout) in the sibling layout: each image
    stays in its folder's split, whatever the hash says (val 0.9 would send most of train/ to val)."""
    root = tmp_path / "ds"
    rels = ["train/a.png", "train/b.png", "train/c.png", "train/d.png", "val/e.png", "val/f.png", "test/g.png"]
    write_small(root / "images", rels)
    s = run(cfg_for(root / "images", None, random_yolo_ckpt, sam2_t_ckpt, sam_min_score=0.0, split={"val": 0.9}))
    assert s.output_dir == root / "labels" and (root / "labels" / "train" / "a.txt").is_file()
    lists = read_lists(s.data_yaml)
    where = {_tail(line, "/images/"): k for k, lines in lists.items() for line in lines}
    assert where == {rel: rel.split("/")[0] for rel in rels}
    files, results, _ = ultralytics_dataset(s.data_yaml)
    assert len(files) == len(rels) and results["missing"] == 0


def test_a_videos_frames_stay_together(tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    """clips/a.avi hashes to train and clips/b.mp4 to val (val 0.5): every frame of each is in its video's list."""
    from annotator.synthetic_video import CountingDetector, write_shapes_video
    from tests.test_video_pipeline import ByShapeTracker, factory_of

    data = tmp_path / "data"
    write_small(data, ["img0.png", "img1.png"])
    a = write_shapes_video(data / "clips" / "a.avi", n_frames=6, image_hw=(64, 96))
    b = write_shapes_video(data / "clips" / "b.mp4", n_frames=6, image_hw=(72, 80))
    s = SplitSettings(val=0.5)
    assert (split_of("clips/a.avi", s), split_of("clips/b.mp4", s)) == ("train", "val")
    cfg = cfg_for(data, tmp_path / "out", random_yolo_ckpt, sam2_t_ckpt, sam_min_score=0.0, split={"val": 0.5})
    summary = run(cfg, engine_options={"video_tracker_factory": factory_of(ByShapeTracker([a, b])),
                                       "video_detector": CountingDetector()})  # fmt: skip
    assert {v["rel_path"]: v["status"] for v in summary.videos} == {"clips/a.avi": "ok", "clips/b.mp4": "ok"}
    lists = read_lists(summary.data_yaml)
    for rel, want in (("clips/a.avi", "train"), ("clips/b.mp4", "val")):
        frames = [line for k in lists for line in lists[k] if f"/{rel}/" in line]
        assert len(frames) == 6 and all(line in lists[want] for line in frames), rel
    files, results, _ = ultralytics_dataset(summary.data_yaml)
    assert len(files) == 2 + 12 and results["missing"] == 0


def test_too_few_images_to_split_validate_on_training_images(tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    """One image (it hashes to val at val 0.5): no train split could exist, so data.yaml is as before."""
    images = tmp_path / "ds" / "images"
    write_small(images, ["img0.png"])
    assert split_of("img0.png", SplitSettings(val=0.5)) == "val"
    s = run(cfg_for(images, None, random_yolo_ckpt, sam2_t_ckpt, sam_min_score=0.0, split={"val": 0.5}))
    doc = yaml.safe_load(s.data_yaml.read_text())
    assert doc["train"] == doc["val"] == "labelled_images.list" and not (s.output_dir / "val.list").exists()
    files, _, _ = ultralytics_dataset(s.data_yaml)
    assert len(files) == 1
