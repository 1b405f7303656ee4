"""YOLO non-maximum suppression split at one host copy per batch: candidates on the device, NMS on the host.

Ultralytics' ``non_max_suppression`` loops over the images of a batch with two boolean indexings and a
torchvision ``nms`` each: three device-to-host syncs per image on CUDA, plus the copies of the results. Here
the device part is fixed-shape and sync-free for the whole batch (:func:`device_candidates`: every anchor's
box, best class and confidence, non-candidates marked), so the batch's candidates come to the host in one
copy; the rest is numpy on the host (:func:`host_nms`), while the GPU already runs the SAM image encoder.

The results equal Ultralytics' (``multi_label=False``, the predictor's default) bit for bit on CPU: the same
float32 arithmetic in the same order, greedy NMS as torchvision's CPU kernel (stable sort by score, IoU
``> iou`` suppresses), boxes scaled by Ultralytics' own ``scale_boxes`` (tested against Ultralytics in
``tests/test_cuda_code_path.py``).

Example:
    >>> import torch
    >>> preds = torch.zeros(1, 4 + 2, 3)  # (B, 4 + nc, anchors): xywh then class scores
    >>> preds[0, :, 0] = torch.tensor([50.0, 50, 20, 20, 0.9, 0.1])
    >>> preds[0, :, 1] = torch.tensor([51.0, 50, 20, 20, 0.8, 0.1])  # overlaps the first: suppressed
    >>> cand = device_candidates(preds, 0.25).numpy()
    >>> host_nms(cand[0], 0.45, 300).tolist()
    [[40.0, 40.0, 60.0, 60.0, 0.8999999761581421, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NOT_A_CANDIDATE = -1.0  # the confidence column of an anchor that is not a candidate (valid ones are > conf >= 0)


def device_candidates(preds, conf: float, classes: Sequence[int] | None = None, nc: int = 0):
    """``(B, 4 + nc [+ extra], A)`` raw YOLO output -> ``(B, A, 6)`` float32 ``x1, y1, x2, y2, conf, class`` per
    anchor in the model-input frame; anchors that Ultralytics would drop before NMS (best class score
    ``<= conf`` or a class not in ``classes``) get confidence :data:`NOT_A_CANDIDATE`. No host sync.

    ``preds`` may be the ``(y, x)`` tuple of a model in eval mode (the first element is used).
    """
    import torch
    from ultralytics.utils.ops import xywh2xyxy

    if isinstance(preds, (list, tuple)):
        preds = preds[0]
    nc = nc or (preds.shape[1] - 4)
    mi = 4 + nc
    xc = preds[:, 4:mi].amax(1) > conf  # (B, A): Ultralytics' candidates
    x = preds.transpose(-1, -2)  # (B, A, C)
    box = xywh2xyxy(x[..., :4])
    best, j = x[..., 4:mi].max(-1)  # (B, A)
    valid = xc & (best > conf)
    cls = j.to(box.dtype)
    if classes is not None:
        wanted = torch.as_tensor(list(classes), device=preds.device)
        valid &= (cls[..., None] == wanted).any(-1)
    best = torch.where(valid, best, torch.full_like(best, NOT_A_CANDIDATE))
    return torch.cat([box, best[..., None], cls[..., None]], -1).float()


def host_nms(
    cand: np.ndarray, iou: float, max_det: int, *, agnostic: bool = False, max_nms: int = 30000, max_wh: int = 7680
) -> np.ndarray:
    """Ultralytics' per-image NMS on one image's ``(A, 6)`` float32 candidates (:func:`device_candidates`, on
    the host): ``(n, 6)`` float32 ``x1, y1, x2, y2, conf, class`` kept, best first, at most ``max_det``."""
    x = cand[cand[:, 4] != NOT_A_CANDIDATE]
    if len(x) > max_nms:  # Ultralytics keeps the max_nms best
        x = x[np.argsort(-x[:, 4], kind="stable")[:max_nms]]
    if not len(x):
        return np.zeros((0, 6), np.float32)
    c = x[:, 5:6] * np.float32(0 if agnostic else max_wh)
    keep = greedy_nms(x[:, :4] + c, x[:, 4], iou)[:max_det]
    return x[keep]


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """torchvision's ``nms`` (its CPU kernel, float32) in numpy: indices of the kept ``(n, 4)`` xyxy boxes, by
    decreasing score (ties in input order); a box is suppressed by a kept one when their IoU is ``> iou``."""
    order = np.argsort(-scores, kind="stable")
    b = boxes[order].astype(np.float32, copy=False)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    n = len(order)
    suppressed = np.zeros(n, bool)
    keep = []
    zero = np.float32(0)
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        r = slice(i + 1, n)
        w = np.maximum(zero, np.minimum(x2[i], x2[r]) - np.maximum(x1[i], x1[r]))
        h = np.maximum(zero, np.minimum(y2[i], y2[r]) - np.maximum(y1[i], y1[r]))
        inter = w * h
        ovr = inter / (areas[i] + areas[r] - inter)
        suppressed[r] |= ovr.astype(np.float64) > iou  # the C++ kernel compares a float with a double
    return order[np.asarray(keep, np.int64)]


def scale_to_image(kept: np.ndarray, input_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Kept rows' boxes from the letterboxed model input back to the original image (Ultralytics'
    ``scale_boxes``, clipped), in place; returns ``kept``."""
    from ultralytics.utils import ops

    if len(kept):
        kept[:, :4] = ops.scale_boxes(tuple(input_hw), kept[:, :4], tuple(image_hw))
    return kept
