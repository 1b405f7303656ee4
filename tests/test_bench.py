"""``annotator bench`` (package ``benchmarks``): the harness runs both pipelines and reports consistent fields (no
timing assertions); ``annotator annotate`` never imports the benchmarks.

Tiny inputs (2 images of 96x128) and MobileSAM with random weights, the fastest SAM encoder to build: the
IoU head is set so that every mask scores 1.0 and is kept; ``--masks gt`` then swaps SAM's logits for the
smoothed ground truth, which exercises the upsampling, polygon and write stages of both pipelines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import bench_cli, versus_ultralytics as bench
from benchmarks.ground_truth import GT_BOXES_NOTE, GT_MASKS_NOTE, parse_hw


@pytest.fixture(scope="module")
def confident_mobile_sam(tmp_path_factory) -> Path:
    import torch
    from ultralytics.models.sam import build

    torch.manual_seed(0)
    model = build.build_mobile_sam(None)
    head = model.mask_decoder.iou_prediction_head.layers[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(1.0)  # every mask scores 1.0 > 0.25: SAM's masks are kept
    path = tmp_path_factory.mktemp("bench_ckpt") / "mobile_sam.pt"
    torch.save(model.state_dict(), path)
    return path


def _args(det: Path, sam: Path, *extra: str) -> list[str]:
    return [
        "--det-model", str(det), "--sam-model", str(sam), "--images", "2", "--image-size", "96x128",
        "--objects", "2", "--repeats", "1", "--batch-size", "2", "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


def test_bench_gt_boxes_json_and_table(random_yolo_ckpt, confident_mobile_sam, capsys):
    rc = bench_cli.main(_args(random_yolo_ckpt, confident_mobile_sam, "--boxes", "gt", "--masks", "gt", "--json"))
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)

    assert rep["images"] == 2 and rep["image_hw"] == [96, 128] and rep["synthetic"] is True
    assert rep["boxes"] == "gt" and "BOTH pipelines" in rep["boxes_note"]
    assert rep["masks"] == "gt" and rep["masks_note"] == GT_MASKS_NOTE
    assert set(rep["pipelines"]) == {"annotator", "ultralytics"}
    assert set(rep["torch_threads"]) == {"annotator", "ultralytics"}
    ours, theirs = rep["pipelines"]["annotator"], rep["pipelines"]["ultralytics"]
    for s in (ours, theirs):
        assert s["images"] == 2
        assert len(s["images_per_s_runs"]) == len(s["seconds_runs"]) == 1
        assert s["images_per_s"] > 0
        assert s["images_per_s_min"] <= s["images_per_s"] <= s["images_per_s_max"]
        assert math.isclose(s["images_per_s"], 2 / s["seconds_runs"][0], rel_tol=1e-9)
        assert s["peak_rss_mib"] > 0 and s["peak_cuda_mib"] is None
        assert len(s["load_1min_runs"]) == 1
    # both pipelines got the same ground-truth boxes, and every (confident) mask, replaced by its smoothed
    # ground-truth mask, gave one instance in each
    assert ours["boxes"] == theirs["boxes"] == ours["instances"] == theirs["instances"] >= 2
    assert set(ours["stage_seconds"]) == set(bench.STAGES)
    assert ours["stage_seconds"]["segment"] > 0 and ours["stage_seconds"]["decode"] > 0
    assert set(theirs["stage_seconds"]) == {"detect+decode", "segment", "polygonize+write"}
    assert sum(theirs["stage_seconds"].values()) <= theirs["seconds_runs"][0] * 1.001
    assert math.isclose(rep["ratio"], ours["images_per_s"] / theirs["images_per_s"], rel_tol=1e-9)
    assert len(rep["ratio_runs"]) == 1
    pg = rep["polygon_stage_gt"]
    assert pg["note"] == bench.POLYGON_NOTE
    assert pg["annotator_s_per_image"] > 0 and pg["ultralytics_s_per_image"] > 0
    assert pg["annotator_vertices_per_polygon"] >= 3 and pg["ultralytics_vertices_per_polygon"] >= 3
    assert rep["notes"] == []

    table = bench.format_report(rep)
    for text in ("images/s", "annotator", "ultralytics", "ratio annotator/ultralytics", GT_BOXES_NOTE,
                 GT_MASKS_NOTE, bench.POLYGON_NOTE, "decode", "detect", "segment", "polygonize", "write",
                 "peak RSS", "CPU s/image", "load average"):  # fmt: skip
        assert text in table, text
    assert f"{rep['ratio']:.2f}x" in table


def test_bench_random_detector_says_sam_never_ran(random_yolo_ckpt, confident_mobile_sam, capsys):
    rc = bench_cli.main(_args(random_yolo_ckpt, confident_mobile_sam, "--warmup", "0"))
    assert rc == 0
    out = capsys.readouterr().out
    assert "the detector's own output" in out and "masks: SAM's own output" in out
    assert "the detector found no box, so SAM never ran" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--repeats", "0"], "--repeats"),
        (["--imgsz", "100"], "multiple of 32"),
        (["--sam-model", "nonexistent_sam.pt"], "sam"),
    ],
)
def test_bench_bad_setup_is_one_line_exit_2(random_yolo_ckpt, confident_mobile_sam, capsys, extra, message):
    assert bench_cli.main(_args(random_yolo_ckpt, confident_mobile_sam, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("annotator bench: error:") and message in err and "\n" not in err


def test_parse_hw():
    assert parse_hw("480x640") == (480, 640)
    with pytest.raises(Exception, match="HxW"):
        parse_hw("640")


def test_annotate_never_imports_the_benchmarks():
    """``annotator annotate`` (parser, help) loads no benchmark module; ``annotator bench`` is forwarded to them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from annotator import cli\n"
        "try:\n"
        "    cli.main(['annotate', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if 'bench' in m))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_annotator_bench_forwards_to_benchmarks(capsys):
    from annotator import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: annotator bench") and "--boxes" in out and "--masks" in out
    assert cli.main(["bench", "--repeats", "0"]) == 2  # checked before any model is loaded
    assert "annotator bench: error: --images, --repeats" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--no-such-flag"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("annotator bench: error:") and "\n" not in err
