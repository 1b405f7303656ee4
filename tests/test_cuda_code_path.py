"""The CUDA code path, checked on a CPU (``ANNOTATOR_CUDA_CODE_PATH=1``, issue 20).

- at most 2 host syncs per batch in the model thread (``Stages.infer``) for detector and label-box prompts, at
  batch 4 and 8, counted by ``benchmarks.syncs.HostSyncCounter`` (TorchDispatchMode + TorchFunctionMode);
- the CUDA code path writes the default CPU path's very label files;
- its NMS (candidates on the device, NMS on the host after one copy) equals Ultralytics', bit for bit;
- decoder calls padded to buckets give the masks of calls always padded to the largest size;
- detector batches are grouped by letterboxed shape, not by original size.

Cost: the 2-core CI machine encodes a 1024 px image with SAM 2-tiny in 2-10 s, so the SAM image encoder is
replaced by :class:`PooledEncoder` (elementwise, per image: exactly batch-independent) wherever whole runs are
compared; the detector (the project's shapes yolo11n), the prompt encoder and the mask decoder are the real
models. Decoder calls are capped at 16 boxes (buckets 4/8/16) instead of 256 (32/64/128/256): same code, CPU-sized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annotator.records import Detections

ENV = "ANNOTATOR_CUDA_CODE_PATH"


class PooledEncoder:
    """Stand-in for SAM 2's ``forward_image``: average-pooled pixels times fixed per-channel weights at the three
    feature levels (elementwise: an image's features never depend on its batch)."""

    def __init__(self, seed: int = 0) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        self.w = [torch.randn(c, generator=g) for c in (32, 64, 256)]

    def __call__(self, x):
        import torch.nn.functional as F

        fpn = [F.avg_pool2d(x, s).mean(1, keepdim=True) * w.view(1, -1, 1, 1) for s, w in zip((4, 8, 16), self.w)]
        return {"vision_features": fpn[-1], "vision_pos_enc": [f * 0 for f in fpn], "backbone_fpn": fpn}


def _cpu_sized(stages):
    seg = stages.segmenter
    seg.model.forward_image = PooledEncoder()
    seg.max_decoder_boxes, seg.decoder_buckets = 16, (4, 8, 16)
    return stages


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from annotator.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("cudapath")
    return write_synthetic_dataset(root / "ds", 8, image_hw=(96, 128), subdirs=("",), empty_fraction=0.0,
                                   labels="box", ext=".png", n_objects=(1, 2), seed=3)  # fmt: skip


def _cfg(dataset, sam, shapes_detector, out, batch: int, prompts: str = "detector"):
    from annotator.config import make_config

    extra = {"prompts": "boxes", "prompt_labels": dataset / "labels"} if prompts == "boxes" else {}
    return make_config(data=dataset / "images", det_model=str(shapes_detector), sam_model=str(sam), device="cpu",
                       batch_size=batch, output_dir=out, conf=0.1, **extra)  # fmt: skip


def _stages(cfg):
    from annotator.models import resolve_models
    from annotator.stages import Stages

    models = resolve_models(cfg.det_model, cfg.sam_model, prompt_labels=cfg.prompt_labels)
    return _cpu_sized(Stages.build(cfg, models))


@pytest.mark.parametrize("prompts,batch", [("detector", 4), ("detector", 8), ("boxes", 4), ("boxes", 8)])
def test_at_most_two_host_syncs_per_batch(dataset, sam2_t_ckpt, shapes_detector, tmp_path, monkeypatch, prompts, batch):
    from annotator.sources import scan_sources
    from benchmarks.syncs import syncs_per_batch

    monkeypatch.setenv(ENV, "1")
    cfg = _cfg(dataset, sam2_t_ckpt, shapes_detector, tmp_path / "out", batch, prompts)
    stages = _stages(cfg)
    assert stages.cuda_path and stages.det_batch == batch and stages.segmenter.cpu_workers == 1
    assert stages.segmenter.encoder_batch == batch and not stages.pin_memory
    items = scan_sources(cfg.data).items[:batch]
    per = syncs_per_batch(stages, cfg, items)
    assert len(per) == 1
    assert sum(per[0].values()) <= 2, per[0]
    # the counter sees the copies: SAM's, and the detector's unless the boxes come from label files
    assert per[0]["Tensor.cpu"] == (2 if prompts == "detector" else 1), per[0]


def test_the_counter_sees_ultralytics_per_image_nms():
    """The proxy is not blind: Ultralytics' own NMS on a batch of 4 costs syncs per image."""
    import torch
    import torchvision  # noqa: F401 - Ultralytics takes torchvision's nms once it is imported
    from ultralytics.utils.nms import non_max_suppression

    from benchmarks.syncs import HostSyncCounter

    preds = torch.rand(4, 4 + 3, 50) * torch.tensor([100.0, 100, 30, 30, 1, 1, 1]).view(1, -1, 1)
    with HostSyncCounter() as c:
        out = non_max_suppression(preds, 0.25, 0.45)
        _ = [o.cpu() for o in out]
    assert c.total >= 4 * 3 + 4 and c.by_op["torchvision.nms"] == 4, c.by_op


def test_cuda_code_path_writes_the_default_paths_label_files(
    dataset, sam2_t_ckpt, shapes_detector, tmp_path, monkeypatch
):
    from annotator.api import run

    files = {}
    for path in ("default", "cuda"):
        if path == "cuda":
            monkeypatch.setenv(ENV, "1")
        out = tmp_path / path
        cfg = _cfg(dataset, sam2_t_ckpt, shapes_detector, out, 4)
        stages = _stages(cfg)
        assert stages.cuda_path == (path == "cuda")
        summary = run(cfg, engine_options={"stages": stages})
        assert summary.failed == 0
        files[path] = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "labels").rglob("*.txt"))}
    assert len(files["default"]) == 8 and sum(bool(v.strip()) for v in files["default"].values()) >= 4
    assert files["cuda"] == files["default"]


def _random_preds(seed: int, b: int, nc: int, a: int):
    """Raw YOLO output ``(b, 4 + nc, a)``: clustered xywh boxes (many overlaps), scores with ties and values
    exactly at the threshold."""
    import torch

    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 300, (b, 4, 2))[:, rng.integers(0, 4, a)] + rng.normal(0, 6, (b, a, 2))
    wh = rng.uniform(4, 60, (b, a, 2))
    scores = rng.choice(np.float32([0.1, 0.25, 0.3, 0.5, 0.9, 0.3000001]), (b, a, nc))
    scores = np.where(rng.random((b, a, nc)) < 0.5, scores, rng.random((b, a, nc)))
    x = np.concatenate([centres, wh, scores], -1).astype(np.float32)
    return torch.from_numpy(x).transpose(1, 2).contiguous()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), classes=st.sampled_from([None, [0], [1, 2]]), agnostic=st.booleans(),
       iou=st.sampled_from([0.45, 0.7, 0.3]), max_det=st.sampled_from([300, 3]))  # fmt: skip
def test_batched_nms_equals_ultralytics(seed, classes, agnostic, iou, max_det):
    import torch
    from ultralytics.utils import ops
    from ultralytics.utils.nms import non_max_suppression

    from annotator.batched_nms import device_candidates, host_nms, scale_to_image

    preds = _random_preds(seed, 3, 3, 120)
    input_hw, image_hws = (320, 352), [(160, 176), (300, 330), (640, 704)]
    ref = non_max_suppression(preds.clone(), 0.25, iou, classes, agnostic, max_det=max_det)
    cand = device_candidates(preds, 0.25, classes).cpu().numpy()
    for k, hw in enumerate(image_hws):
        got = scale_to_image(host_nms(cand[k], iou, max_det, agnostic=agnostic), input_hw, hw)
        r = ref[k].clone()
        r[:, :4] = ops.scale_boxes(input_hw, r[:, :4], hw)
        np.testing.assert_array_equal(got, r.numpy())


def test_decoder_spans_pick_the_smallest_bucket():
    from annotator.segment import decoder_spans

    b = (32, 64, 128, 256)
    assert decoder_spans(0, 256, b) == []
    assert decoder_spans(1, 256, b) == [(0, 1, 32)]
    assert decoder_spans(32, 256, b) == [(0, 32, 32)]
    assert decoder_spans(65, 256, b) == [(0, 65, 128)]
    assert decoder_spans(300, 256, b) == [(0, 256, 256), (256, 300, 64)]
    assert decoder_spans(600, 256, b) == [(0, 256, 256), (256, 512, 256), (512, 600, 128)]
    assert decoder_spans(5, 256, ()) == [(0, 5, 256)]  # no buckets: today's padding to the largest


@pytest.fixture(scope="module")
def cuda_path_segmenter(sam2_t_ckpt):
    from annotator.segment import Segmenter

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, "1")
        seg = Segmenter(sam2_t_ckpt, "sam2_t.pt", "sam2", device="cpu", min_score=0.0)
    assert seg._cuda
    seg.model.forward_image = PooledEncoder()
    seg.max_decoder_boxes = 16
    return seg


@pytest.mark.parametrize("counts", [[1], [5], [3, 6], [9, 11]])
def test_bucketed_decoder_calls_give_the_masks_of_full_size_calls(cuda_path_segmenter, counts):
    """Box counts crossing the (CPU-sized) bucket edges 4/8/16 (1 -> 4, 5 -> 8, 9 -> 16, 20 -> 16 + 4), the boxes
    of one image (features broadcast) and of several (gathered): the logits and scores equal those of calls
    always padded to 16 boxes (the code before buckets)."""
    from annotator.segment import decoder_spans

    seg = cuda_path_segmenter
    rng = np.random.default_rng(sum(counts))
    x = rng.integers(0, 255, (len(counts), 1024, 1024, 3), dtype=np.uint8)
    hws = [(1024, 1024)] * len(counts)
    dets = []
    for n in counts:
        xy = rng.uniform(0, 800, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (n, 2))], 1).astype(np.float32)
        dets.append(Detections(boxes, np.zeros(n, np.int64), np.ones(n, np.float32)))
    feats = seg.encode_batch(x)
    assert feats[0].shape[0] == len(counts)
    seg.decoder_buckets = (4, 8, 16)
    assert [s for *_, s in decoder_spans(sum(counts), 16, seg.decoder_buckets)] == {
        1: [4], 5: [8], 9: [16], 20: [16, 4]}[sum(counts)]  # fmt: skip
    got = seg.decode_batch(feats, hws, dets)
    seg.decoder_buckets = ()
    ref = seg.decode_batch(feats, hws, dets)
    for g, r, n in zip(got, ref, counts):
        assert g.logits_lowres.shape == (n, 256, 256) and g.scores.shape == (n,)
        np.testing.assert_allclose(g.scores, r.scores, rtol=0, atol=1e-5)
        np.testing.assert_allclose(g.logits_lowres, r.logits_lowres, rtol=0, atol=1e-4)
        flipped = (g.logits_lowres > 0) != (r.logits_lowres > 0)
        assert not flipped.any() or np.abs(r.logits_lowres[flipped]).max() < 1e-4


def test_detector_batches_group_by_letterboxed_shape(shapes_detector):
    """Images of three original sizes that letterbox to one input shape form one detector batch (not three
    padded ones), and their detections match each image detected alone."""
    from annotator.detect import Detector
    from annotator.polygons import Polygonizer
    from annotator.records import DecodedImage, SourceItem
    from annotator.stages import CpuSteps, PreparedImage, Stages
    from annotator.synthetic import make_shapes_image

    det = Detector(shapes_detector, device="cpu", conf=0.1)
    rng = np.random.default_rng(2)
    sizes = [(96, 128), (192, 256), (48, 64), (120, 160)]
    images = [make_shapes_image(rng, hw, n_objects=(2, 3))[0] for hw in sizes]
    steps = CpuSteps(det.input_spec, Polygonizer())
    prepared = []
    for k, im in enumerate(images):
        item = SourceItem(Path(f"/nowhere/{k}.png"), f"{k}.png")
        p = steps.prepare(DecodedImage(item, im))
        assert isinstance(p, PreparedImage)
        prepared.append(p)
    assert len({p.det_input.shape for p in prepared}) == 1 and len({p.image_hw for p in prepared}) == 4
    stages = Stages(det, None, Polygonizer(), det_batch=4)  # type: ignore[arg-type]
    assert stages._detector_batches(prepared) == [[0, 1, 2, 3]]
    calls = []
    infer = det.infer
    det.infer = lambda batch, hws: calls.append(len(batch)) or infer(batch, hws)  # count the detector calls
    got = stages.detect(prepared)
    assert calls == [4]
    alone = det(images[:1]) + det(images[1:2]) + det(images[2:3]) + det(images[3:])
    assert sum(len(d) for d in got) >= 4
    for g, a in zip(got, alone):
        assert np.array_equal(g.class_ids, a.class_ids)
        np.testing.assert_allclose(g.xyxy_px, a.xyxy_px, atol=1e-2)
        np.testing.assert_allclose(g.det_conf, a.det_conf, atol=1e-4)

