"""``prompts: everything``: SAM's automatic masks from a point grid, no detector, one class.

Random-weight SAM masks are noise, so the filter (stability, thresholds, content, boxes, NMS) is shown on
ground-truth stand-ins: logits whose masks, scores and boxes are known exactly. The random checkpoint then
shows the plumbing (API -> YOLO + COCO, a trainable data.yaml, the ledger) and the agreement with Ultralytics'
``SAM(...)(image)`` (its ``generate``) on the same grid and decoder.
"""

from __future__ import annotations

import functools
import json

import cv2
import numpy as np
import pytest
import torch

from annotator import auto_annotate
from annotator.config import make_config
from annotator.errors import ConfigError
from annotator.everything import EverythingSettings, point_grid, point_prompts, select_masks, stability_scores

pytestmark = pytest.mark.slow

LOOSE = dict(pred_iou_min=0.0, stability_min=0.0, stability_offset=0.01)  # random weights: let noise masks through


def _rect(h0, h1, w0, w1, inside=5.0, outside=-5.0) -> torch.Tensor:
    lg = torch.full((256, 256), outside)
    lg[h0:h1, w0:w1] = inside
    return lg


# -- the filter, on known logits ------------------------------------------------------------------------------
def test_point_grid_is_ultralytics_grid_over_the_image_content():
    from ultralytics.models.sam.amg import build_all_layer_point_grids

    for hw in [(240, 320), (720, 1280), (1000, 300)]:
        gain = min(1024 / hw[0], 1024 / hw[1])
        fill = np.array([hw[1], hw[0]]) * gain / 1024  # Ultralytics' generate: the image share of the input
        theirs = build_all_layer_point_grids(5, 0, 1)[0] * fill * [1024, 1024]
        np.testing.assert_allclose(point_grid(5, hw), theirs, atol=1e-4)
        assert (point_grid(5, hw).max(0) < [hw[1] * gain, hw[0] * gain]).all()  # never in the pad


def test_stability_score_is_amgs_and_exact_on_a_known_mask():
    from ultralytics.models.sam.amg import calculate_stability_score

    lg = torch.randn(6, 256, 256) * 3
    want = calculate_stability_score(lg, 0.0, 1.0)
    np.testing.assert_array_equal(stability_scores(lg, 0.0, 1.0).numpy(), want.numpy())
    known = _rect(10, 30, 10, 20)  # 200 px at +5
    known[30:35, 10:20] = 0.5  # 50 px above the threshold, below threshold + offset
    assert stability_scores(known[None], 0.0, 1.0).tolist() == [np.float32(200 / 250)]
    assert stability_scores(torch.full((1, 256, 256), -5.0), 0.0, 1.0).tolist() == [0.0]  # empty: 0, not NaN


def test_stability_on_lowres_logits_is_close_to_ultralytics_on_upsampled_ones_for_smooth_masks():
    """Ours is computed on the 256 px logits (cheap), Ultralytics' on masks upsampled to 1024 px: for masks that
    are not noise the two agree to about a hundredth (random-weight masks are noise: there they differ)."""
    import torch.nn.functional as F
    from ultralytics.models.sam.amg import calculate_stability_score

    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    blobs = torch.stack([r - ((yy - 100) ** 2 + (xx - 120) ** 2).sqrt() * s for r, s in [(40, 1), (30, 0.5), (60, 2)]])
    ours = stability_scores(blobs, 0.0, 1.0)
    up = F.interpolate(blobs[None], (1024, 1024), mode="bilinear", align_corners=False)[0]
    theirs = calculate_stability_score(up, 0.0, 1.0)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=0.01)


def test_select_masks_thresholds_content_boxes_and_nms_exactly():
    s = EverythingSettings()  # pred_iou_min 0.88, stability_min 0.95, offset 1, nms_iou 0.7
    masks = {
        "a": (_rect(10, 20, 30, 50), 0.95),  # kept
        "a_dup": (_rect(11, 20, 30, 50), 0.90),  # IoU 0.9 with a: suppressed by NMS
        "c_at_min": (_rect(100, 140, 100, 120), 0.88),  # predicted IoU == min: kept
        "d_low": (_rect(60, 80, 150, 170), 0.8799),  # below pred_iou_min
        "e_unstable": (_rect(60, 80, 10, 20, inside=0.5), 0.99),  # stability 0
        "f_in_pad": (_rect(200, 220, 10, 40), 0.97),  # only in the letterbox pad
        "g_cut": (_rect(140, 160, 200, 230), 0.93),  # partly in the pad: box ends at the content
    }
    names = list(masks)
    lg = torch.stack([m for m, _ in masks.values()])
    sc = torch.tensor([v for _, v in masks.values()])
    keep, boxes = select_masks(lg, sc, s, content_hw=(150, 256))
    assert [names[k] for k in keep.tolist()] == ["a", "g_cut", "c_at_min"]  # by predicted IoU
    assert boxes.tolist() == [[30.0, 10.0, 50.0, 20.0], [200.0, 140.0, 230.0, 150.0], [100.0, 100.0, 120.0, 140.0]]
    keep, _ = select_masks(lg, sc, s.model_copy(update={"nms_iou": 0.95}), content_hw=(150, 256))
    assert "a_dup" in [names[k] for k in keep.tolist()]  # IoU 0.9 is no duplicate at 0.95
    loose = s.model_copy(update={"stability_min": 0.0, "pred_iou_min": 0.0})
    keep, _ = select_masks(lg, sc, loose, content_hw=(150, 256))
    assert {names[k] for k in keep.tolist()} == set(names) - {"a_dup", "f_in_pad"}


def test_settings_are_validated_and_misspellings_named():
    with pytest.raises(ConfigError, match="did you mean 'points_per_side'"):
        make_config(data=".", prompts="everything", everything={"points_per_sid": 8})
    with pytest.raises(ConfigError, match="everything.pred_iou_min"):
        make_config(data=".", prompts="everything", everything={"pred_iou_min": 1.5})
    with pytest.raises(ConfigError, match="class_name"):
        make_config(data=".", prompts="everything", everything={"class_name": " "})
    assert EverythingSettings().digest() != EverythingSettings(points_per_side=16).digest()


def test_cli_flags_land_in_the_everything_section_over_the_config_file(tmp_path):
    from annotator.cli import _settings, build_parser

    conf = tmp_path / "c.yaml"
    conf.write_text("prompts: everything\neverything: {points_per_side: 8, nms_iou: 0.5}\n")
    ns = build_parser().parse_args(["annotate", ".", "--config", str(conf), "--points-per-side", "16",
                                    "--everything-class", "blob"])  # fmt: skip
    cfg = make_config(**_settings(ns))
    assert (cfg.everything.points_per_side, cfg.everything.nms_iou, cfg.everything.class_name) == (16, 0.5, "blob")
    ns = build_parser().parse_args(["annotate", ".", "--prompts", "everything"])
    assert make_config(**_settings(ns)).everything == EverythingSettings()


def test_point_prompts_equal_the_prompt_encoders(sam2_t_ckpt, mobile_sam_ckpt):
    """Our label-free prompt embedding (no host sync on CUDA) is SAM 2's and MobileSAM's own, bit for bit."""
    from annotator.models import load_sam

    pts = torch.tensor([[10.0, 20.0], [500.0, 700.5], [1000.0, 3.0]])
    cases = [(sam2_t_ckpt, "sam2_t.pt", "sam_prompt_encoder"), (mobile_sam_ckpt, "mobile_sam.pt", "prompt_encoder")]
    for ckpt, name, attr in cases:
        pe = getattr(load_sam(ckpt, name).eval(), attr)
        with torch.inference_mode():
            want = pe(points=(pts[:, None], torch.ones(3, 1, dtype=torch.int32)), boxes=None, masks=None)
            got = point_prompts(pe, pts)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), name


# -- the random checkpoint: plumbing and the comparison with Ultralytics ---------------------------------------
@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    from annotator.synthetic import make_shapes_image

    root = tmp_path_factory.mktemp("everything") / "images"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i, hw in enumerate([(120, 160), (150, 100)]):
        cv2.imwrite(str(root / f"{i}.png"), make_shapes_image(rng, hw, n_objects=(1, 2))[0])
    return root


def test_api_writes_a_trainable_one_class_dataset_without_a_detector(two_images, sam2_t_ckpt, tmp_path):
    from ultralytics.data.utils import check_det_dataset

    kw = dict(det_model="no-such-detector.pt", sam_model=str(sam2_t_ckpt), device="cpu", output_dir=tmp_path / "out",
              format="both", prompts="everything", everything=dict(points_per_side=3, points_per_batch=4, **LOOSE),
              sam_min_score=0.0)  # fmt: skip
    s = auto_annotate(two_images, **kw)
    assert s.failed == 0 and s.annotated >= 1 and s.annotated + s.empty == 2  # a noise mask may have no polygon
    rows = [ln.split() for f in sorted(s.labels_dir.rglob("*.txt")) for ln in f.read_text().splitlines()]
    assert rows and all(r[0] == "0" and len(r) >= 7 for r in rows)
    data = check_det_dataset(str(s.data_yaml))
    assert data["names"] == {0: "object"} and data["nc"] == 1
    coco = json.loads(s.coco_json.read_text())
    assert [c["name"] for c in coco["categories"]] == ["object"] and len(coco["annotations"]) == len(rows)
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert report["models"]["det_model"]["path"] == "everything"
    assert auto_annotate(two_images, **kw).unchanged == 2  # same settings: nothing re-annotated, no model loaded


def test_changed_settings_re_annotate(two_images, sam2_t_ckpt):
    from annotator.models import resolve_models
    from annotator.workplan import hash_weights, model_fingerprint

    def fp(**ev):
        cfg = make_config(data=two_images, prompts="everything", sam_model=str(sam2_t_ckpt), everything=ev)
        models = resolve_models(cfg.det_model, cfg.sam_model, det_stand_in=cfg.everything.digest())
        return model_fingerprint(cfg, models, hash_weights(models, {}))

    assert fp() == fp() != fp(points_per_side=16) != fp(class_name="thing")


def test_same_masks_as_ultralytics_generate_on_the_same_grid(sam2_t_ckpt, tmp_path, monkeypatch):
    """Same checkpoint, image, 4x4 grid, predicted-IoU threshold; stability and NMS off (on noise masks our
    low-res stability differs from Ultralytics' upsampled one, and every noise box covers the image).

    Asserted: the same masks survive (their predicted IoUs equal), and our low-res logits passed through
    Ultralytics' own upsampling give its masks (IoU >= 0.99; the decoder's batch shapes differ, which moves
    logits in the last float bits). Our own window upsampling thresholds the logits instead of a 1024 px binary
    mask, so on noise masks it agrees less (printed, not asserted)."""
    import torch.nn.functional as F
    from ultralytics import SAM
    from ultralytics.utils import ops

    from annotator.models import resolve_models
    from annotator.records import DecodedImage, SourceItem
    from annotator.stages import Stages
    from annotator.synthetic import make_shapes_image

    hw = (240, 320)
    image = make_shapes_image(np.random.default_rng(1), hw, n_objects=(2, 3))[0]
    ev = dict(points_per_side=4, points_per_batch=8, pred_iou_min=0.48, stability_min=0.0, stability_offset=0.01,
              nms_iou=1.0)  # fmt: skip
    cfg = make_config(data=tmp_path, prompts="everything", everything=ev, sam_model=str(sam2_t_ckpt), device="cpu",
                      sam_min_score=0.0)  # fmt: skip
    stages = Stages.build(cfg, resolve_models(cfg.det_model, cfg.sam_model, det_stand_in=cfg.everything.digest()))
    prepared = stages.prepare(DecodedImage(SourceItem(tmp_path / "a.png", "a.png"), image))
    (dets,), (out,) = stages.detector(stages.segmenter, prepared.sam_input[None], [hw])

    from ultralytics.models.sam.predict import Predictor

    same = functools.partialmethod(Predictor.generate, points_stride=4, points_batch_size=8, conf_thres=0.48,
                                   stability_score_thresh=0.0, stability_score_offset=0.01)  # fmt: skip
    monkeypatch.setattr(Predictor, "generate", same)
    res = SAM(str(sam2_t_ckpt))(image, device="cpu", verbose=False, save=False, conf=0.0, iou=1.0)[0]
    theirs = res.masks.data.numpy().astype(bool)
    assert len(out) == len(theirs) > 0
    np.testing.assert_allclose(np.sort(out.scores), np.sort(res.boxes.conf.numpy()), atol=1e-5)

    lg = torch.from_numpy(out.logits_lowres)[None]
    their_route = F.interpolate(lg, (1024, 1024), mode="bilinear", align_corners=False)[0] > 0
    ratio = [round(o * min(1024 / hw[0], 1024 / hw[1])) / o for o in hw]
    via_theirs = ops.scale_masks(their_route[None].float(), hw, (ratio, (0, 0)), padding=False)[0].numpy() > 0

    def best_iou(a, b):
        inter = (a[:, None] & b[None]).reshape(len(a), len(b), -1).sum(-1)
        union = (a[:, None] | b[None]).reshape(len(a), len(b), -1).sum(-1)
        return (inter / np.maximum(union, 1)).max(1)

    assert best_iou(via_theirs, theirs).min() >= 0.99
    from annotator.everything import EverythingSource

    none_pass = EverythingSource(EverythingSettings(points_per_side=1))  # SAM's defaults: no noise mask passes
    (d0,), (o0,) = none_pass(stages.segmenter, prepared.sam_input[None], [hw])
    assert len(d0) == len(o0) == 0 and o0.logits_lowres.shape == (0, 256, 256)
    ours = np.stack([i.mask.to_full() for i in stages.segmenter.finisher(out, dets, hw)])
    print(f"our finished noise masks vs Ultralytics': median best IoU {np.median(best_iou(ours, theirs)):.3f}")


def test_ray_split_mode_writes_the_local_engines_bytes(two_images, sam2_t_ckpt, tmp_path):
    """Split mode is the odd one: the detector pool passes images through and the segmenter's actor generates
    (fused mode is the local engine's path; both were byte-equal when measured)."""

    def files(d):
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
                if p.is_file() and ".annotator" not in p.parts and p.name != "run_report.json"}  # fmt: skip

    common = dict(sam_model=str(sam2_t_ckpt), device="cpu", format="both", prompts="everything", sam_min_score=0.0,
                  everything=dict(points_per_side=3, points_per_batch=4, **LOOSE), batch_size=2)  # fmt: skip
    auto_annotate(two_images, output_dir=tmp_path / "local", **common)
    auto_annotate(two_images, output_dir=tmp_path / "ray", engine="ray", ray={"num_cpus": 2, "fused": False}, **common)
    assert files(tmp_path / "ray") == files(tmp_path / "local")
