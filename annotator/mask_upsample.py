"""SAM's 256x256 low-res mask logits -> full-resolution :class:`~annotator.records.MaskCrop` s (CPU, numpy).

Two paths, for the logits of ``N`` masks of one image (letterboxed top-left in the 1024 px SAM input, as
Ultralytics' SAM predictor letterboxes):

* :func:`upsample_crops` (default): bilinear upsampling only inside the window where each mask can be
  positive, float32 gathers as Ultralytics' own ``F.interpolate``; ``O(window)`` per mask;
* :func:`upsample_full`: Ultralytics' exact ``ops.scale_masks`` of whole masks (``compat="ultralytics"``);
* :class:`MaskFinisher`: one image's decoder output -> its :class:`~annotator.records.Instance` list.

The two agree up to float rounding of the bilinear weights (pixels whose logit is within ~1e-6 of the threshold).
Both accept a numpy array or a torch tensor; both are thread-safe (no shared state, no device work).

Example:
    >>> lg = np.full((1, 256, 256), -4.0, np.float32); lg[0, 10:40, 20:60] = 4.0
    >>> crop = upsample_crops(lg, (480, 640))[0]
    >>> crop.image_hw, crop.area_px > 0
    ((480, 640), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from annotator.records import Detections, DropReason, Instance, MaskCrop, add_dropped

SAM_INPUT_PX = 1024  # square input side of every SAM / SAM 2 image encoder
LOWRES_PX = 256  # side of the mask decoder's logits


def input_gain(image_hw: tuple[int, int]) -> float:
    """Letterbox gain of an ``(H, W)`` image into the 1024 px SAM input (input pixels per original pixel)."""
    return min(SAM_INPUT_PX / image_hw[0], SAM_INPUT_PX / image_hw[1])


def lowres_gain(image_hw: tuple[int, int]) -> tuple[float, float]:
    """Low-res mask pixels per original pixel, ``(gain_h, gain_w)``, as Ultralytics' SAM postprocess computes it."""
    g = input_gain(image_hw)
    return tuple(round(o * g) * LOWRES_PX / SAM_INPUT_PX / o for o in image_hw)  # type: ignore[return-value]


def _as_numpy(logits, dtype) -> np.ndarray:
    if isinstance(logits, np.ndarray):
        return logits.astype(dtype, copy=False)
    return logits.detach().to(device="cpu").numpy().astype(dtype, copy=False)


def upsample_full(logits, image_hw: tuple[int, int], threshold: float = 0.0) -> list[MaskCrop]:
    """Ultralytics' exact path: ``ops.scale_masks`` of whole ``(N, 256, 256)`` masks to ``image_hw``, threshold,
    then crop."""
    import torch
    from ultralytics.utils import ops

    lg = torch.from_numpy(np.ascontiguousarray(_as_numpy(logits, np.float32)))
    ratio = lowres_gain(image_hw)
    full = ops.scale_masks(lg[None], image_hw, (ratio, (0, 0)), padding=False)[0] > threshold
    return [MaskCrop.from_full(m) for m in full.numpy()]


def _interp_taps(out_len: int, gain: float, limit: int, dtype):
    """Bilinear taps (align_corners=False) sampling ``src = (y + 0.5) * gain - 0.5`` for ``y in range(out_len)``.

    Returns ``(i0, i1, frac)``: source indices ``(out_len,)`` int64 and the weight of ``i1``, ``(out_len,)`` in
    ``dtype``. ``limit`` is the last source index that may be read (Ultralytics crops the letterbox padding when
    the content ends on a whole low-res pixel, else samples with border clamping).
    """
    import torch

    y = torch.arange(out_len, dtype=torch.float64)
    src = ((y + 0.5) * gain - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=limit)
    i1 = (i0 + 1).clamp(max=limit)
    frac = (src - i0.double()).clamp(0, 1)
    return i0, i1, frac.to(dtype)


def upsample_crops(logits, image_hw: tuple[int, int], threshold: float = 0.0) -> list[MaskCrop]:
    """Upsample ``(N, 256, 256)`` logits to ``image_hw`` only where each mask can be positive.

    A full-resolution pixel can only be above ``threshold`` if one of the (up to 4) low-res logits it
    interpolates is, so rows/columns whose sources are all below are skipped. Inside that window the bilinear
    interpolation is two gathers (rows, then columns) of the low-res logits, in float32 as Ultralytics' own
    ``F.interpolate``: each mask costs ``O(window)`` instead of ``O(H * W)``; memory holds one window at a time.
    """
    import torch

    return _upsample_crops(logits, image_hw, threshold, torch.float32)


def _upsample_crops(logits, image_hw: tuple[int, int], threshold: float, dtype) -> list[MaskCrop]:
    """:func:`upsample_crops` computing in ``dtype`` (float64 is kept for ``benchmarks/upsample_masks.py``)."""
    h, w = image_hw
    gain_h, gain_w = lowres_gain(image_hw)
    bottom, right = max(round(h * gain_h), 1), max(round(w * gain_w), 1)
    exact = abs(h * gain_h - bottom) + abs(w * gain_w - right) <= 1e-3
    lim_h, lim_w = (bottom - 1, right - 1) if exact else (LOWRES_PX - 1, LOWRES_PX - 1)
    iy0, iy1, fy = (t.numpy() for t in _interp_taps(h, gain_h, lim_h, dtype))
    ix0, ix1, fx = (t.numpy() for t in _interp_taps(w, gain_w, lim_w, dtype))
    lg = _as_numpy(logits, fy.dtype)  # numpy gathers: ~10x faster than torch indexing
    pos = lg > threshold
    rowpos_all, colpos_all = pos.any(axis=2), pos.any(axis=1)  # (N, 256) each
    crops = []
    for n in range(lg.shape[0]):
        rowpos, colpos = rowpos_all[n], colpos_all[n]
        rows = np.flatnonzero(rowpos[iy0] | rowpos[iy1])
        cols = np.flatnonzero(colpos[ix0] | colpos[ix1])
        if rows.size == 0 or cols.size == 0:
            crops.append(MaskCrop(np.zeros((0, 0), bool), (0, 0), (h, w)))
            continue
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        c0, c1 = int(ix0[x0]), int(ix1[x1 - 1]) + 1  # the source columns the window reads
        src = lg[n, :, c0:c1]
        f = fy[y0:y1, None]
        rows_i = src[iy0[y0:y1]] * (1 - f) + src[iy1[y0:y1]] * f  # (window_h, c1 - c0)
        g = fx[x0:x1]
        win = (rows_i[:, ix0[x0:x1] - c0] * (1 - g) + rows_i[:, ix1[x0:x1] - c0] * g) > threshold
        crop = MaskCrop.from_full(win)
        if crop.area_px:
            crop = MaskCrop(crop.bitmap, (crop.origin_xy[0] + x0, crop.origin_xy[1] + y0), (h, w))
        else:
            crop = MaskCrop(crop.bitmap, (0, 0), (h, w))
        crops.append(crop)
    return crops


@dataclass(frozen=True)
class MaskFinisher:
    """SAM's low-res output of one image -> its :class:`Instance` list (host only, any thread).

    Keeps a mask when its SAM score is above ``min_score`` (Ultralytics SAM's ``conf``) and it is not empty;
    each :class:`Instance` is built from *its own* detection (class id, confidence, box, ``det_index``), so a
    dropped mask never shifts the others. ``mask_upsample``: ``"crop"`` (window upsampling) or ``"full"``
    (Ultralytics' exact ``scale_masks``, compat mode); see :mod:`annotator.mask_upsample`. ``threshold``: the
    model's ``mask_threshold`` (0.0 for every SAM / SAM 2). Picklable: Ray's CPU tasks run it without the model.

    An object whose box was not a prompt (a point-only object, ``Detections.box_is_prompt`` False) gets the
    tight box of its mask as ``box_xyxy_px`` (nothing here crops by the prompt box: the upsampling window comes
    from the logits). ``keep_detector_masks`` (``detector_masks: keep_better``): where the detections carry the
    detector's masks, the rule of :func:`annotator.detector_masks.keeps_detector_mask` picks the detector's mask
    over SAM's.
    """

    min_score: float
    mask_upsample: str = "crop"
    threshold: float = 0.0
    keep_detector_masks: bool = False

    def __call__(
        self, out, det: Detections, image_hw: tuple[int, int], dropped: dict[str, int] | None = None
    ) -> list[Instance]:
        """The kept masks as instances, in detection order; each dropped one is counted in ``dropped`` (when
        given) under its :class:`~annotator.records.DropReason`."""
        dropped = {} if dropped is None else dropped
        if len(out) != len(det):
            raise ValueError(f"SamOutput has {len(out)} masks but the detections {len(det)} boxes")
        scores = np.asarray(out.scores)
        keep_det = self.keep_detector_masks and det.det_masks is not None
        keep = np.flatnonzero(scores > self.min_score) if not keep_det else np.arange(len(det))
        add_dropped(dropped, DropReason.SAM_SCORE, len(det) - keep.size)
        if keep.size == 0:
            return []
        logits = out.logits_lowres[keep]
        up = upsample_full if self.mask_upsample == "full" else upsample_crops
        box_used = det.boxes_used()
        if keep_det:
            from annotator.detector_masks import keeps_detector_mask  # here: detector_masks imports this module
        instances = []
        for k, crop in zip(keep.tolist(), up(logits, image_hw, self.threshold)):
            if keep_det:
                if keeps_detector_mask(float(scores[k]), float(det.det_conf[k]), crop.area_px == 0, det.det_masks[k]):
                    crop = det.det_masks[k]
                elif scores[k] <= self.min_score:
                    add_dropped(dropped, DropReason.SAM_SCORE)
                    continue
            if crop.area_px == 0:
                add_dropped(dropped, DropReason.EMPTY_MASK)
                continue  # an empty mask has no polygon; its detection is dropped, nothing else moves
            box = det.xyxy_px[k].copy()
            if not box_used[k]:
                x, y, w, h = crop.bbox_xywh_px
                box = np.array([x, y, x + w, y + h], np.float32)
            instances.append(
                Instance(
                    class_id=int(det.class_ids[k]),
                    det_conf=float(det.det_conf[k]),
                    box_xyxy_px=box,
                    sam_score=float(scores[k]),
                    mask=crop,
                    det_index=k,
                    attributes=det.attributes[k] if det.attributes is not None else None,
                )
            )
        return instances
