"""``detector_masks``: a -seg detector's masks as SAM mask prompts, or kept where SAM's score is worse.

Random-weight SAM 2 and a random ``yolo11n-seg.yaml`` detector are enough for the plumbing: the mask prompt
reaches the decoder (results differ from box-only and equal Ultralytics' ``SAM2Predictor(bboxes=..., masks=...)``
in compat mode), the ``keep_better`` rule, the refusal with a detector that has no masks.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from annotator.config import make_config
from annotator.detector_masks import keeps_detector_mask, mask_prompts_lowres
from annotator.errors import ConfigError
from annotator.mask_upsample import MaskFinisher
from annotator.records import Detections, MaskCrop
from annotator.synthetic import make_shapes_image

pytestmark = pytest.mark.slow

HW = (200, 300)


@pytest.fixture(scope="module")
def random_seg_ckpt(tmp_path_factory):
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("seg") / "yolo11n-seg_random.pt"
    YOLO("yolo11n-seg.yaml").save(str(path))
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """One image, its objects' boxes and (slightly eroded: not the truth) masks as detector output."""
    im, objs = make_shapes_image(np.random.default_rng(3), HW, n_objects=(3, 3))
    path = tmp_path_factory.mktemp("img") / "a.png"
    cv2.imwrite(str(path), im)
    masks = tuple(MaskCrop.from_full(cv2.erode(o.mask.astype(np.uint8), np.ones((3, 3))) > 0) for o in objs)
    det = Detections(np.array([o.box_xyxy_px for o in objs], np.float32), np.array([o.class_id for o in objs]),
                     np.full(len(objs), 0.8, np.float32), det_masks=masks)  # fmt: skip
    return path, im, det


def test_refused_without_a_segmentation_detector(shapes_detector, tmp_path):
    from annotator.detect import Detector

    with pytest.raises(ConfigError, match="detector_masks needs a segmentation detector .* is a detect model"):
        Detector(shapes_detector, device="cpu", with_masks=True)
    with pytest.raises(ConfigError, match="detector_masks 'prompt' needs prompts 'detector'"):
        make_config(data=tmp_path, prompts="boxes", prompt_labels=tmp_path, detector_masks="prompt")


def test_keep_better_rule():
    full = np.zeros(HW, bool)
    full[10:30, 10:40] = True
    dm = MaskCrop.from_full(full)
    assert keeps_detector_mask(0.5, 0.9, False, dm) and not keeps_detector_mask(0.95, 0.9, False, dm)
    assert keeps_detector_mask(0.99, 0.1, True, dm)  # SAM's mask is empty
    assert not keeps_detector_mask(0.1, 0.9, False, MaskCrop.from_full(np.zeros(HW, bool)))

    from annotator.segment import SamOutput

    lg = np.full((3, 256, 256), -5.0, np.float32)
    lg[:, 100:120, 100:140] = 5.0
    out = SamOutput(lg, np.array([0.2, 0.95, 0.05], np.float32))
    det = Detections(np.zeros((3, 4), np.float32), np.arange(3), np.array([0.9, 0.9, 0.01], np.float32),
                     det_masks=(dm, dm, dm))  # fmt: skip
    got = MaskFinisher(0.1, keep_detector_masks=True)(out, det, HW)
    assert [i.det_index for i in got] == [0, 1]  # 2: SAM's score under min_score and above the detector's conf
    assert got[0].mask is dm and got[1].mask is not dm and got[0].sam_score == pytest.approx(0.2)
    assert [i.det_index for i in MaskFinisher(0.1)(out, det, HW)] == [0, 1]


def _decode(seg, feats, det, *, batched: bool):
    """The decoder alone on encoded features (the encoder, the slow part on a CPU, runs once per test)."""
    import torch

    from annotator.segment import SamOutput

    seg.batch_decoder = batched
    with torch.inference_mode():
        boxes, img_idx = seg._boxes([HW], [det], [0])
        lg, sc = seg._decode(feats, boxes, img_idx, [len(det)], seg._extra_prompts([HW], [det], [0]))
    return SamOutput(lg.numpy(), sc.numpy())


def test_mask_prompt_reaches_the_decoder_and_equals_ultralytics(sam2_t_ckpt, shapes):
    import torch
    from ultralytics.models.sam import SAM2Predictor

    from annotator.segment import Segmenter

    path, im, det = shapes
    seg = Segmenter(sam2_t_ckpt, "sam2_t.pt", "sam2", device="cpu", min_score=0.0, mask_upsample="full")
    with torch.inference_mode():
        feats = seg._encode_images(seg.prepare(im)[None], [0])
    box_only = _decode(seg, feats, det, batched=False)
    seg.mask_prompts = True
    compat = _decode(seg, feats, det, batched=False)
    assert not np.allclose(box_only.logits_lowres, compat.logits_lowres)
    ours = [i.mask.to_full() for i in seg.finish(compat, det, HW)]

    ov = dict(model=str(sam2_t_ckpt), device="cpu", save=False, verbose=False, conf=0.0, imgsz=1024)  # as SAM()
    pr = SAM2Predictor(overrides=ov)
    pr.set_image(str(path))
    full = np.stack([m.to_full() for m in det.det_masks]).astype(np.float32)
    res = pr(bboxes=det.xyxy_px, masks=full)[0]
    theirs = res.masks.data.cpu().numpy().astype(bool)
    assert len(ours) == len(theirs) >= 1
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)

    seg.max_decoder_boxes = 2  # the default batched decoder, in calls of 2
    batched = _decode(seg, feats, det, batched=True)
    np.testing.assert_allclose(batched.scores, compat.scores, rtol=0, atol=1e-5)
    assert float(np.abs(batched.logits_lowres - compat.logits_lowres).max()) <= 1e-4
    assert mask_prompts_lowres(det.det_masks, HW).shape == (3, 1, 256, 256)


def test_seg_detector_masks_end_to_end(random_seg_ckpt, sam2_t_ckpt, shapes, tmp_path):
    from annotator.api import run
    from annotator.detect import Detector
    from annotator.models import resolve_models
    from annotator.workplan import model_fingerprint

    path, im, _ = shapes
    d = Detector(random_seg_ckpt, device="cpu", conf=0.0, max_det=3, with_masks=True)([im])[0]
    assert d.det_masks is not None and len(d.det_masks) == len(d) and all(m.image_hw == HW for m in d.det_masks)
    common = dict(data=path.parent, det_model=str(random_seg_ckpt), sam_model=str(sam2_t_ckpt), device="cpu",
                  conf=0.0, max_det=3, sam_min_score=0.0, format="both", output_dir=tmp_path / "out")  # fmt: skip
    s = run(make_config(**common, detector_masks="keep_better"))
    assert s.failed == 0 and s.annotated == 1
    models = resolve_models(str(random_seg_ckpt), str(sam2_t_ckpt))
    hashes = {str(models.det_path): "d", str(models.sam_path): "s"}
    prints = {model_fingerprint(make_config(**common, detector_masks=m), models, hashes) for m in ("prompt", "ignore")}
    assert len(prints) == 2  # another detector_masks setting re-annotates
