"""``prompts: everything``: SAM's automatic mask generation (a grid of point prompts), no detector.

It stands where the detector stands (:class:`EverythingSource`, one class named ``class_name``) but needs the
segmenter's image features, so it runs on the model thread, in :class:`~annotator.stages.Stages`, on both
engines. Per image (all on the device, one host copy at the end)::

    grid   points_per_side**2 points evenly over the image content in the 1024 px letterboxed frame (not the pad)
    decode chunks of points_per_batch points (the last one padded: fixed shapes), multimask: 3 masks a point
    filter predicted IoU >= pred_iou_min and stability >= stability_min (on the 256 px low-res logits), a
           non-empty box inside the content (one boolean compaction per chunk: no per-point host syncs)
    NMS    box NMS (torchvision) at nms_iou, ordered by predicted IoU
    ->     Detections (box in image pixels, class 0, det_conf = predicted IoU clipped to [0, 1])
           + SamOutput (the survivors' low-res logits and predicted IoUs)

so that :meth:`~annotator.stages.CpuSteps.finish` upsamples, crops and polygonizes them like any detection's
masks (``sam_min_score`` and ``min_area_px`` still apply). Differences from Ultralytics' ``Predictor.generate``
(``crop_n_layers=0``): thresholds are ``>=`` (theirs ``>``), the stability score and boxes are computed on the
low-res logits (theirs on masks upsampled to 1024 px), and ``sam_min_score`` replaces its ``conf``.

Example:
    >>> import torch
    >>> lg = torch.full((2, 256, 256), -5.0); lg[0, 10:20, 30:50] = 5.0; lg[1, 11:20, 30:50] = 5.0
    >>> keep, boxes = select_masks(lg, torch.tensor([0.95, 0.90]), EverythingSettings(), (256, 256))
    >>> keep.tolist(), boxes[0].tolist()  # the second mask overlaps the first (IoU 0.9): suppressed
    ([0], [30.0, 10.0, 50.0, 20.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from annotator import sam_ops
from annotator.mask_upsample import LOWRES_PX, input_gain, lowres_gain
from annotator.records import Detections


class EverythingSettings(BaseModel):
    """The ``everything:`` section (``prompts: everything``); defaults are SAM's automatic mask generator's.

    Attributes:
        points_per_side: grid of ``n x n`` point prompts over the image content.
        points_per_batch: points per decoder call (3 masks each). ``None``: 64 on a GPU, 4 on a CPU, where small
            calls are faster (64 points of a 720p image decoded in 5.8 s in calls of 4, 9.3 s in calls of 64).
        pred_iou_min: keep a mask when SAM's predicted IoU is ``>=`` this.
        stability_min: keep a mask when its stability score is ``>=`` this: IoU of the mask thresholded at
            ``+offset`` and at ``-offset`` around the mask threshold (logits).
        stability_offset: that logit offset.
        nms_iou: box IoU above which the lower-scored of two masks is a duplicate.
        class_name: the one class of every mask (``data.yaml`` names, COCO category).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    points_per_side: int = Field(32, ge=1, le=256, description="grid of n x n point prompts over the image")
    points_per_batch: int | None = Field(
        None, ge=1, le=4096, description="points per decoder call (3 masks each); default 64 on a GPU, 4 on a CPU"
    )
    pred_iou_min: float = Field(0.88, ge=0.0, le=1.0, description="keep masks with predicted IoU >= this")
    stability_min: float = Field(0.95, ge=0.0, le=1.0, description="keep masks with stability score >= this")
    stability_offset: float = Field(1.0, gt=0.0, description="logit offset of the stability score")
    nms_iou: float = Field(0.7, ge=0.0, le=1.0, description="box NMS IoU between duplicate masks")
    class_name: str = Field("object", description="name of the one class")

    @field_validator("class_name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = str(v).strip()
        if not v or "\n" in v:
            raise ValueError(f"must be a non-empty one-line name, got {v!r}")
        return v

    def digest(self) -> str:
        """SHA-256 of these settings: stands for the detector's weights in the ledger (a change re-annotates)."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps({"everything": self.model_dump()}, sort_keys=True).encode()).hexdigest()


def point_grid(n: int, image_hw: tuple[int, int]) -> np.ndarray:
    """``(n*n, 2)`` float32 ``(x, y)`` points of SAM's grid (cell centres) over the content of an ``(H, W)`` image
    letterboxed top-left into the 1024 px input, as Ultralytics' ``generate`` places them (row by row).

    Example:
        >>> point_grid(2, (512, 1024)).tolist()  # content: 1024 x 512 of the 1024 x 1024 input
        [[256.0, 128.0], [768.0, 128.0], [256.0, 384.0], [768.0, 384.0]]
    """
    from ultralytics.models.sam.amg import build_point_grid

    g = input_gain(image_hw)
    return (build_point_grid(n) * [image_hw[1] * g, image_hw[0] * g]).astype(np.float32)


def stability_scores(logits, threshold: float, offset: float):
    """``(N, h, w)`` logits -> ``(N,)`` IoU of ``logits > threshold + offset`` and ``> threshold - offset``
    (the first is inside the second), 0 where both are empty: ``amg.calculate_stability_score``."""
    import torch
    from ultralytics.models.sam.amg import calculate_stability_score

    return torch.nan_to_num(calculate_stability_score(logits, threshold, offset), nan=0.0)  # both empty: 0


def lowres_boxes(logits, threshold: float, content_hw: tuple[int, int]):
    """``(N, 256, 256)`` logits -> ``(N, 4)`` float32 xyxy boxes of ``logits > threshold`` inside the top-left
    ``content_hw`` low-res pixels (continuous coordinates: pixel ``c`` spans ``[c, c+1)``); empty: zeros."""
    import torch

    pos = logits > threshold
    h, w = logits.shape[-2:]
    rows = pos.any(2) & (torch.arange(h, device=pos.device) < content_hw[0])
    cols = pos.any(1) & (torch.arange(w, device=pos.device) < content_hw[1])

    def span(on, n):
        idx = torch.arange(n, device=on.device, dtype=torch.float32)
        lo = torch.where(on, idx, torch.full_like(idx, n)).amin(1)
        hi = torch.where(on, idx + 1, torch.zeros_like(idx)).amax(1)
        return torch.where(hi > lo, lo, torch.zeros_like(lo)), hi

    x0, x1 = span(cols, w)
    y0, y1 = span(rows, h)
    return torch.stack([x0, y0, x1, y1], 1)


def _candidates(logits, scores, s: EverythingSettings, content_hw, threshold: float = 0.0):
    """Device-side filter of one chunk, without a host sync: ``(N,)`` keep flags and ``(N, 4)`` low-res boxes."""
    boxes = lowres_boxes(logits, threshold, content_hw)
    stab = stability_scores(logits, threshold, s.stability_offset)
    ok = (scores >= s.pred_iou_min) & (stab >= s.stability_min)
    ok &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return ok, boxes


def select_masks(logits, scores, s: EverythingSettings, content_hw: tuple[int, int], threshold: float = 0.0):
    """The masks kept of ``(N, 256, 256)`` low-res logits with predicted IoUs ``(N,)``.

    Returns:
        ``keep`` ``(K,)`` int64 indices, by descending predicted IoU, and ``boxes`` ``(K, 4)`` float32 low-res xyxy.
        :meth:`EverythingSource._one_image` does the same chunk by chunk (the filter per chunk, NMS over all).
    """
    import torchvision

    ok, boxes = _candidates(logits, scores, s, content_hw, threshold)
    idx = ok.nonzero().flatten()
    keep = torchvision.ops.nms(boxes[idx].float(), scores[idx].float(), s.nms_iou)
    return idx[keep], boxes[idx[keep]]


class EverythingSource:
    """Stands where the detector stands (``prompts: everything``): one class, and masks from a point grid.

    Example:
        >>> src = EverythingSource(EverythingSettings(points_per_side=16))
        >>> src.names
        {0: 'object'}
    """

    input_spec = None  # no detector letterbox
    makes_masks = True  # needs the segmenter: see Stages._models

    def __init__(self, settings: EverythingSettings) -> None:
        self.settings = settings
        self.names = {0: settings.class_name}

    def __call__(self, segmenter, prepared, image_hws: Sequence[tuple[int, int]]) -> tuple[list[Detections], list]:
        """Masks of a batch of SAM inputs ``(B, 1024, 1024, 3)`` uint8 (numpy or torch) on ``segmenter``'s device.

        Returns:
            One :class:`Detections` and one :class:`~annotator.segment.SamOutput` per image (same order, same N).
        """
        import torch

        from annotator.segment import SamOutput

        if len(prepared) != len(image_hws):
            raise ValueError(f"got {len(prepared)} prepared images but {len(image_hws)} image sizes")
        seg = segmenter
        seg.threads.apply()
        dets, outs = [], []
        with torch.inference_mode():
            feats = seg._encode_images(prepared, list(range(len(image_hws))))
            for j, hw in enumerate(image_hws):
                with seg._autocast():
                    lg, sc, boxes = self._one_image(seg, feats, j, hw)
                n = lg.shape[0]
                host = torch.cat([sc.reshape(n, 1).float(), boxes.float(), lg.flatten(1).float()], 1).cpu().numpy()
                gh, gw = lowres_gain(hw)
                xyxy = (host[:, 1:5] / np.array([gw, gh, gw, gh], np.float32)).astype(np.float32)
                xyxy = np.minimum(xyxy, np.array([hw[1], hw[0], hw[1], hw[0]], np.float32))
                scores = host[:, 0].copy()
                dets.append(Detections(xyxy, np.zeros(n, np.int64), np.clip(scores, 0.0, 1.0).astype(np.float32)))
                outs.append(SamOutput(host[:, 5:].reshape(n, LOWRES_PX, LOWRES_PX), scores))
        return dets, outs

    def _one_image(self, seg, feats: list, j: int, hw: tuple[int, int]):
        """``(K, 256, 256)`` logits, ``(K,)`` predicted IoUs, ``(K, 4)`` low-res boxes of image ``j`` (device)."""
        import torch
        import torchvision

        s = self.settings
        gh, gw = lowres_gain(hw)
        content = (max(1, round(hw[0] * gh)), max(1, round(hw[1] * gw)))
        thr = seg._mask_threshold
        pts = seg._upload(point_grid(s.points_per_side, hw))
        step = s.points_per_batch or (64 if seg._cuda else 4)
        lgs, scs, bxs = [], [], []
        for a in range(0, pts.shape[0], step):
            chunk = pts[a : a + step]
            n = chunk.shape[0]
            if n < step:  # fixed shapes: pad with copies of the last point, drop their masks below
                chunk = torch.cat([chunk, chunk[-1:].expand(step - n, -1)])
            lg, sc = decode_points(seg.model, seg.family, feats, j, chunk)
            lg, sc = lg[: n * 3].float(), sc[: n * 3].float()
            ok, boxes = _candidates(lg, sc, s, content, thr)
            idx = ok.nonzero().flatten()  # one host sync per chunk, never per point
            lgs.append(lg.index_select(0, idx))
            scs.append(sc.index_select(0, idx))
            bxs.append(boxes.index_select(0, idx))
        lg, sc, boxes = torch.cat(lgs), torch.cat(scs), torch.cat(bxs)
        keep = torchvision.ops.nms(boxes, sc, s.nms_iou)
        return lg[keep], sc[keep], boxes[keep]


def point_prompts(prompt_encoder, points_1024):
    """The prompt embedding of ``(P, 2)`` foreground points (input-frame pixels), one point per prompt.

    Equal to ``prompt_encoder(points=(points[:, None], ones(P, 1)), boxes=None, masks=None)`` (SAM, SAM 2: a
    padding point is added when there is no box), without its boolean indexing by label (a host sync on CUDA).
    Returns ``sparse (P, 2, C)`` and ``dense (P, C, 64, 64)``.
    """
    return sam_ops.static_label_prompts(prompt_encoder, points_1024.reshape(-1, 1, 2), (1,))


def decode_points(model, family: str, feats: list, j: int, points_1024):
    """Multimask decoder on ``(P, 2)`` points of image ``j``: ``(3P, 256, 256)`` logits and ``(3P,)`` predicted
    IoUs, point-major (the 3 masks of point 0 first), as Ultralytics' ``_inference_features(multimask_output=True)``."""
    pe = model.prompt_encoder if family == "sam" else model.sam_prompt_encoder
    sparse, dense = point_prompts(pe, points_1024)
    return sam_ops.decode_embedded(model, family, feats, sparse, dense, j=j, multimask=True)
