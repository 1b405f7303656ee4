"""Detections to tracks: mask IoU and a greedy one-to-one assignment (numpy only, no torch).

The matcher pairs the tracks' masks on a keyframe (propagated by SAM 2's memory) with the detections' masks on
that frame (SAM 2 prompted by each box alone). Greedy, not Hungarian: pairs are taken by decreasing IoU, each
track and each detection at most once, and a pair counts only at ``IoU >= min_iou``. When the masks of one
side do not overlap each other, a mask has IoU > 0.5 with at most one of them (it would have to cover more than
half of itself twice), so for ``min_iou > 0.5`` every row and column has at most one candidate and greedy is the
optimal (Hungarian) assignment; below 0.5 it is the usual greedy approximation. Ties go to the lower track row,
then the lower detection column (reproducible).

Example:
    >>> a = np.zeros((2, 4, 4), bool); a[0, :2] = True; a[1, 2:] = True
    >>> b = a[::-1].copy()  # the same two masks, in the other order
    >>> greedy_match(mask_iou_matrix(a, b), 0.5)
    [(0, 1), (1, 0)]
"""

from __future__ import annotations

import numpy as np


def mask_iou_matrix(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """IoU of every pair of masks: ``(A, h, w)`` bool x ``(B, h, w)`` bool -> ``(A, B)`` float64 in ``[0, 1]``.

    Two empty masks have IoU 0 (an empty track never matches).
    """
    a = np.asarray(masks_a, bool)
    b = np.asarray(masks_b, bool)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"masks must be (A, h, w) and (B, h, w) of one size, got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float64)
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T  # exact: counts < 2**24 for masks up to 4096 x 4096
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float64)


def greedy_match(iou: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """One-to-one ``(row, col)`` pairs of an ``(R, C)`` IoU matrix, by decreasing IoU, each ``>= min_iou``.

    Returned sorted by row. Ties: lower row first, then lower column.
    """
    iou = np.asarray(iou, np.float64)
    if iou.ndim != 2:
        raise ValueError(f"iou must be a (rows, cols) matrix, got shape {iou.shape}")
    rows, cols = np.nonzero(iou >= min_iou)
    order = np.lexsort((cols, rows, -iou[rows, cols]))  # last key is primary: IoU desc, then row, then col
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c))
    return sorted(pairs)
