"""A ``-seg`` detector's own masks (``detector_masks``): SAM's mask prompt, or the mask kept when SAM's is worse.

``detector_masks`` (config) says what a segmentation detector's masks are for:

* ``ignore`` (default): boxes only, as with a plain detector;
* ``prompt``: each detection's mask is given to SAM with its box, as SAM's ``mask_input``: the binary mask in
  the image frame letterboxed to SAM's 1024 px input (nearest, pad 0, top-left), then bilinear to the 256 x 256
  low-res frame, exactly what Ultralytics' SAM predictor does with ``masks=`` (:func:`mask_prompts_lowres`);
* ``keep_better``: SAM gets the box only; then, per detection, the detector's mask is written instead of SAM's
  when ``sam_score < det_conf`` or SAM's mask is empty (and the detector's is not). The detector's confidence
  and SAM's predicted IoU are different quantities: the rule trusts the detector where it is surer than SAM
  is of its mask. A kept detector mask keeps SAM's score in ``sam_score``, and is not subject to ``sam_min_score``.

Refused (one-line error) with a detector that is not a segmentation model.

Example:
    >>> m = np.zeros((100, 200), bool); m[10:50, 20:80] = True
    >>> mask_prompts_lowres([MaskCrop.from_full(m)], (100, 200)).shape
    (1, 1, 256, 256)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from annotator.mask_upsample import LOWRES_PX, SAM_INPUT_PX, input_gain
from annotator.records import MaskCrop


def mask_prompts_lowres(masks: Sequence[MaskCrop], image_hw: tuple[int, int]) -> np.ndarray:
    """Binary masks of one image -> ``(N, 1, 256, 256)`` float32 SAM mask prompts, as Ultralytics converts them."""
    import cv2
    import torch
    import torch.nn.functional as F

    h, w = image_hw
    r = input_gain(image_hw)
    nw, nh = round(w * r), round(h * r)
    out = np.zeros((len(masks), 1, LOWRES_PX, LOWRES_PX), np.float32)
    for i, m in enumerate(masks):
        full = m.to_full().astype(np.float32)
        if (nw, nh) != (w, h):
            full = cv2.resize(full, (nw, nh), interpolation=cv2.INTER_NEAREST)
        big = np.zeros((SAM_INPUT_PX, SAM_INPUT_PX), np.float32)
        big[:nh, :nw] = full
        low = F.interpolate(torch.from_numpy(big)[None, None], size=(LOWRES_PX, LOWRES_PX), mode="bilinear",
                            align_corners=False)  # fmt: skip
        out[i, 0] = low[0, 0].numpy()
    return out


def keeps_detector_mask(sam_score: float, det_conf: float, sam_mask_empty: bool, det_mask: MaskCrop | None) -> bool:
    """The ``keep_better`` rule for one detection (see the module docstring)."""
    if det_mask is None or det_mask.area_px == 0:
        return False
    return sam_mask_empty or sam_score < det_conf


def masks_from_results(result, image_hw: tuple[int, int]) -> tuple[MaskCrop, ...]:
    """An Ultralytics segmentation ``Results`` -> one full-image :class:`MaskCrop` per box, in box order
    (Ultralytics' ``scale_masks`` from its letterboxed mask frame, threshold 0.5)."""
    from ultralytics.utils import ops

    if result.masks is None or len(result.boxes) == 0:
        return tuple(MaskCrop(np.zeros((0, 0), bool), (0, 0), image_hw) for _ in range(len(result.boxes)))
    data = result.masks.data.float()
    full = ops.scale_masks(data[None], image_hw)[0] > 0.5
    return tuple(MaskCrop.from_full(m) for m in full.cpu().numpy())
