"""The speed paths of the segmenter and detector give the results of the plain fp32 paths (within tolerance).

* Batched image encoder (``encoder_batch``; and CPU shards encoded in parallel threads) + one decoder call for
  the boxes of all images == one image at a time: per mask IoU >= 0.99, SAM scores within 1e-4 (the decoder
  batching alone is tested much tighter in test_segment_batched.py).
* Crop upsampling (float32 gathers inside each mask's window) == Ultralytics' whole-image ``scale_masks``:
  per mask IoU >= 0.999, and only pixels whose logit is within float rounding of the threshold may differ.
* Ultralytics' ``select_device`` resetting torch's thread count does not change our stages' count.
"""

from __future__ import annotations

import numpy as np
import pytest

from annotator.records import Detections, MaskCrop
from annotator.synthetic import make_shapes_image


def _iou(a: MaskCrop, b: MaskCrop) -> float:
    fa, fb = a.to_full(), b.to_full()
    union = (fa | fb).sum()
    return 1.0 if union == 0 else float((fa & fb).sum() / union)


def _smooth_logits(masks: np.ndarray, image_hw: tuple[int, int]):
    """(N, 256, 256) logits that are positive on each mask, letterboxed top-left (as SAM's decoder outputs)."""
    import torch

    from benchmarks.ground_truth import realistic_logits

    return torch.from_numpy(realistic_logits(masks, image_hw))


@pytest.mark.parametrize("image_hw", [(97, 131), (480, 640), (720, 1280), (1080, 1920), (333, 1000)])
@pytest.mark.parametrize("kind", ["shapes", "noise"])
def test_crop_upsampling_matches_ultralytics_full(image_hw, kind):
    import torch

    from annotator.mask_upsample import upsample_crops, upsample_full

    if kind == "shapes":
        _, objs = make_shapes_image(1, image_hw, n_objects=4)
        logits = _smooth_logits(np.stack([o.mask for o in objs]), image_hw)
    else:  # random-SAM-like: long noisy outlines, masks touching the letterbox padding
        logits = torch.randn(4, 256, 256, generator=torch.Generator().manual_seed(0)) * 4
    full, crop = upsample_full(logits, image_hw), upsample_crops(logits, image_hw)
    assert len(full) == len(crop) == len(logits)
    for f, c in zip(full, crop):
        assert c.image_hw == image_hw
        assert _iou(f, c) >= 0.999
        # the pixels that differ sit on the threshold: never more than a handful per mask
        assert int((f.to_full() != c.to_full()).sum()) <= max(5, f.area_px // 10_000)


def test_crop_upsampling_empty_masks():
    import torch

    from annotator.mask_upsample import upsample_crops

    crops = upsample_crops(torch.full((2, 256, 256), -5.0), (480, 640))
    assert [c.area_px for c in crops] == [0, 0]
    assert all(c.image_hw == (480, 640) for c in crops)


@pytest.fixture(scope="module")
def shape_images():
    rng = np.random.default_rng(3)
    out = []
    for hw in [(240, 320), (240, 320)]:  # one shape: one encoder batch
        image, objs = make_shapes_image(rng, hw, n_objects=3)
        dets = Detections(
            np.array([o.box_xyxy_px for o in objs], np.float32),
            np.array([o.class_id for o in objs], np.int64),
            np.linspace(0.9, 0.5, len(objs)).astype(np.float32),
        )
        out.append((image, dets))
    return out


def _same_instances(got, ref) -> int:
    compared = 0
    for g_insts, r_insts in zip(got, ref):
        by_det = {i.det_index: i for i in r_insts}
        assert sorted(by_det) == sorted(i.det_index for i in g_insts)  # the same masks kept
        for g in g_insts:
            r = by_det[g.det_index]
            assert g.class_id == r.class_id and g.det_conf == r.det_conf
            assert abs(g.sam_score - r.sam_score) <= 1e-4
            assert _iou(g.mask, r.mask) >= 0.99
            compared += 1
    return compared


def test_batched_and_sharded_segmenter_equal_one_at_a_time(sam2_t_ckpt, shape_images):
    """fp32, one image per call (the reference) vs one batched encoder call vs CPU shards in worker threads
    (both with one decoder call for all boxes)."""
    from annotator.segment import Segmenter

    seg = Segmenter(sam2_t_ckpt, "sam2_t.pt", "sam2", device="cpu", min_score=0.0)
    images = [im for im, _ in shape_images]
    dets = [d for _, d in shape_images]
    seg.cpu_workers = 1
    single = [seg([im], [d])[0] for im, d in zip(images, dets)]
    seg.encoder_batch = len(images)  # one encoder call for the batch
    batched = seg(images, dets)
    seg.cpu_workers, seg.encoder_batch = 2, 1  # one image per worker thread
    sharded = seg(images, dets)
    assert _same_instances(batched, single) >= 2
    assert _same_instances(sharded, single) >= 2


def test_stages_keep_their_torch_threads(random_yolo_ckpt, sam2_t_ckpt):
    """Ultralytics' select_device resets torch's threads on every predictor set-up; our stages keep their count."""
    import torch
    from ultralytics.utils import NUM_THREADS

    from annotator.detect import Detector
    from annotator.segment import Segmenter

    before = torch.get_num_threads()
    image = np.zeros((64, 64, 3), np.uint8)
    try:
        det = Detector(random_yolo_ckpt, device="cpu")
        seg = Segmenter(sam2_t_ckpt, "sam2_t.pt", "sam2", device="cpu")
        assert det.threads.n == seg.threads.n == NUM_THREADS  # default: what Ultralytics itself runs with
        det.threads.n = seg.threads.n = NUM_THREADS + 1  # a chosen count (annotator bench --threads)
        det([image])  # the first predict sets up Ultralytics' predictor, which calls select_device again
        assert torch.get_num_threads() == NUM_THREADS + 1
        torch.set_num_threads(1)  # e.g. another Ultralytics model set up in this process
        det([image])
        assert torch.get_num_threads() == NUM_THREADS + 1
        torch.set_num_threads(1)
        seg.threads.apply()  # what Segmenter.__call__ does first (an encoder pass costs seconds on a CPU)
        assert torch.get_num_threads() == NUM_THREADS + 1
    finally:
        torch.set_num_threads(before)
