"""The batched SAM path (one decoder call for the boxes of all images) == the per-image reference path.

Random-weight SAM 2-tiny and MobileSAM (their logits are noise, which is fine for an equivalence test), images
of different sizes with several boxes each and one image without boxes. ``cpu_workers = 1`` and
``encoder_batch = 1``: both paths compute the very same encoder features, so only the decoder batching differs.

Tolerances (measured on CPU, fp32): scores ``atol 1e-5`` (measured max difference: 0, or ~1e-7); masks: no
pixel differs outside the band where the reference logit, bilinearly upsampled to the image, is within
``BAND_REL = 1e-4`` of the mask's largest ``|logit|`` (the batched decoder's logits moved by ~1e-6 at most).
"""

from __future__ import annotations

import numpy as np
import pytest

from annotator.records import Detections
from annotator.synthetic import make_shapes_image

BAND_REL = 1e-4
SIZES = [(240, 320), (300, 200), (97, 131), (180, 260)]  # the last one gets no box


@pytest.fixture(scope="module")
def images_and_dets():
    rng = np.random.default_rng(5)
    images, dets = [], []
    for k, hw in enumerate(SIZES):
        image, objs = make_shapes_image(rng, hw, n_objects=(3, 4))
        images.append(image)
        if k == 2:
            dets.append(Detections.empty())
            continue
        boxes = np.array([o.box_xyxy_px for o in objs], np.float32).reshape(-1, 4)
        n = len(boxes)
        dets.append(Detections(boxes, np.arange(n, dtype=np.int64) % 3, np.linspace(0.9, 0.5, n).astype(np.float32)))
    return images, dets


def _segmenter(ckpt, name, family, cache: bool = True, **kw):
    from annotator.segment import Segmenter

    seg = Segmenter(ckpt, name, family, device="cpu", min_score=0.0, **kw)
    seg.cpu_workers = 1
    seg.encoder_batch = 1
    if not cache:
        return seg
    memo: dict = {}
    encode = seg._encode_images

    def cached(prepared, todo):  # the encoder is deterministic here; encode each batch once for all paths
        key = (np.asarray(prepared)[:, ::97, ::89].tobytes(), tuple(todo))
        if key not in memo:
            memo[key] = encode(prepared, todo)
        return memo[key]

    seg._encode_images = cached
    return seg


def _run(seg, images, dets, per_image: bool):
    x = np.stack([seg.prepare(im) for im in images])
    hws = [im.shape[:2] for im in images]
    return (seg.infer_per_image if per_image else seg.infer)(x, hws, dets)


def _full_logits(lowres: np.ndarray, image_hw) -> np.ndarray:
    """Ultralytics' scale_masks of whole logits (no threshold): ``(N, H, W)`` float32."""
    import torch
    from ultralytics.utils import ops

    from annotator.mask_upsample import lowres_gain

    t = torch.from_numpy(np.ascontiguousarray(lowres, np.float32))[None]
    return ops.scale_masks(t, image_hw, (lowres_gain(image_hw), (0, 0)), padding=False)[0].numpy()


def _assert_same_masks(got, ref, images, dets) -> dict:
    stats = {"score": 0.0, "logit": 0.0, "band_pixels": 0, "masks": 0}
    for g, r, im, d in zip(got, ref, images, dets):
        assert len(g) == len(r) == len(d)
        assert g.logits_lowres.shape == (len(d), 256, 256) and g.logits_lowres.dtype == np.float32
        assert g.scores.shape == (len(d),) and g.scores.dtype == np.float32
        if not len(d):
            continue
        np.testing.assert_allclose(g.scores, r.scores, rtol=0, atol=1e-5)
        stats["score"] = max(stats["score"], float(np.abs(g.scores - r.scores).max()))
        stats["logit"] = max(stats["logit"], float(np.abs(g.logits_lowres - r.logits_lowres).max()))
        fg, fr = _full_logits(g.logits_lowres, im.shape[:2]), _full_logits(r.logits_lowres, im.shape[:2])
        for k in range(len(d)):
            band = BAND_REL * float(np.abs(r.logits_lowres[k]).max())
            differ = (fg[k] > 0) != (fr[k] > 0)
            assert int((differ & (np.abs(fr[k]) > band)).sum()) == 0
            stats["band_pixels"] += int(differ.sum())
            stats["masks"] += 1
    return stats


def test_sam2_box_prompts_equal_ultralytics_prompt_encoder():
    import torch
    from ultralytics.models.sam import build

    from annotator.sam_ops import sam2_box_prompts

    torch.manual_seed(0)
    pe = build.build_sam2_t(None).sam_prompt_encoder.eval()
    xy = torch.rand(7, 2) * 900
    boxes = torch.cat([xy, xy + torch.rand(7, 2) * 120 + 1], 1)
    with torch.inference_mode():
        labels = torch.tensor([[2, 3]], dtype=torch.int32).expand(7, -1)
        ref_sparse, ref_dense = pe(points=(boxes.view(-1, 2, 2), labels), boxes=None, masks=None)
        sparse, dense = sam2_box_prompts(pe, boxes)
    assert torch.equal(sparse, ref_sparse) and torch.equal(dense, ref_dense)


@pytest.mark.parametrize("hw", [(480, 640), (97, 131), (1024, 1024), (2000, 300), (1, 7), (1500, 1500)])
def test_letterbox_equals_ultralytics(hw):
    from ultralytics.data.augment import LetterBox

    from annotator.segment import letterbox_rgb

    im = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    ref = LetterBox((1024, 1024), auto=False, center=False)(image=im)[..., ::-1]
    got = letterbox_rgb(im)
    assert got.shape == (1024, 1024, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, ref)


def test_sam2_batched_decoder_matches_per_image(sam2_t_ckpt, images_and_dets):
    images, dets = images_and_dets
    seg = _segmenter(sam2_t_ckpt, "sam2_t.pt", "sam2")
    assert seg.batch_decoder
    seg.max_decoder_boxes = 10_000  # all boxes of all images in one decoder call (on a CPU the default is 4)
    ref = _run(seg, images, dets, per_image=True)
    got = _run(seg, images, dets, per_image=False)
    assert len(got[2]) == 0 and got[2].logits_lowres.shape == (0, 256, 256)
    stats = _assert_same_masks(got, ref, images, dets)
    assert stats["masks"] >= 9
    assert stats["logit"] <= 1e-4  # measured: ~1e-6 (see the module docstring)
    print(f"sam2 batched vs per-image: {stats}")

    # small decoder calls (the boxes of an image split over calls, calls spanning images) give the same again
    seg.max_decoder_boxes = 2
    _assert_same_masks(_run(seg, images, dets, per_image=False), ref, images, dets)

    # finish(): every (non-empty) mask with its own detection's class, confidence, box
    insts = [seg.finish(o, d, im.shape[:2]) for o, d, im in zip(got, dets, images)]
    assert sum(len(i) for i in insts) >= 6
    for i, d, im in zip(insts, dets, images):
        for inst in i:
            k = inst.det_index
            assert inst.class_id == d.class_ids[k] and inst.det_conf == pytest.approx(float(d.det_conf[k]))
            np.testing.assert_array_equal(inst.box_xyxy_px, d.xyxy_px[k])
            assert inst.mask.image_hw == im.shape[:2] and inst.mask.area_px > 0


def test_sam2_compat_mode_is_bit_identical_to_ultralytics_per_image_calls(sam2_t_ckpt, images_and_dets):
    """``mask_upsample="full"`` (compat) decodes image by image: the very logits of Ultralytics' own call."""
    images, dets = images_and_dets
    seg = _segmenter(sam2_t_ckpt, "sam2_t.pt", "sam2", mask_upsample="full")
    assert not seg.batch_decoder
    for g, r in zip(_run(seg, images, dets, per_image=False), _run(seg, images, dets, per_image=True)):
        np.testing.assert_array_equal(g.logits_lowres, r.logits_lowres)
        np.testing.assert_array_equal(g.scores, r.scores)


def test_mobile_sam_batch_matches_per_image(mobile_sam_ckpt, images_and_dets):
    images, dets = images_and_dets
    images, dets = images[1:3], dets[1:3]  # one image with boxes, one without: MobileSAM's encoder is slow enough
    seg = _segmenter(mobile_sam_ckpt, "mobile_sam.pt", "sam")
    got, ref = _run(seg, images, dets, per_image=False), _run(seg, images, dets, per_image=True)
    for g, r in zip(got, ref):  # SAM's decoder runs per image in both paths
        np.testing.assert_array_equal(g.logits_lowres, r.logits_lowres)
        np.testing.assert_array_equal(g.scores, r.scores)
    assert len(got[0]) == len(dets[0]) >= 3 and len(got[1]) == 0


def test_infer_accepts_a_torch_tensor_and_checks_lengths(sam2_t_ckpt, images_and_dets):
    import torch

    images, dets = images_and_dets[0][1:3], images_and_dets[1][1:3]  # one image with boxes, one without
    seg = _segmenter(sam2_t_ckpt, "sam2_t.pt", "sam2", cache=False)
    x = np.stack([seg.prepare(im) for im in images])
    hws = [im.shape[:2] for im in images]
    a = seg.infer(x, hws, dets)
    b = seg.infer(torch.from_numpy(x), hws, dets)
    for g, r in zip(a, b):
        np.testing.assert_array_equal(g.logits_lowres, r.logits_lowres)
    with pytest.raises(ValueError, match="detection sets"):
        seg.infer(x, hws, dets[:-1])
    assert all(len(o) == 0 for o in seg.infer(x, hws, [Detections.empty()] * len(images)))


def test_cuda_chunks_are_padded_to_encoder_batch(sam2_t_ckpt, monkeypatch):
    """On CUDA every encoder call gets exactly ``encoder_batch`` images (the last chunk zero-padded, its padding
    dropped from the features); images without boxes are not encoded. (The encoder is faked: shapes only.)"""
    import torch

    from annotator import sam_ops

    seen = []

    def fake_encode(model, family, batch):
        seen.append(tuple(batch.shape))
        return [batch.mean(dim=(1, 2, 3)), batch[:, :, :2, :2]]

    seg = _segmenter(sam2_t_ckpt, "sam2_t.pt", "sam2", cache=False)
    monkeypatch.setattr(sam_ops, "encode", fake_encode)
    seg._cuda, seg.encoder_batch = True, 4  # as on a GPU
    x = np.random.default_rng(0).integers(0, 255, (6, 1024, 1024, 3), dtype=np.uint8)
    todo = [0, 1, 2, 4, 5]  # image 3 has no box
    with torch.inference_mode():
        feats = seg._encode_images(x, todo)
    assert seen == [(4, 3, 1024, 1024)] * 2
    assert feats[0].shape == (5,) and feats[1].shape == (5, 3, 2, 2)
    ref = sam_ops.normalise(torch.from_numpy(x[todo]), seg._mean, seg._std)
    torch.testing.assert_close(feats[0], ref.mean(dim=(1, 2, 3)), rtol=0, atol=0)
