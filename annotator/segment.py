"""Segmenter stage: SAM / SAM 2 / MobileSAM with box prompts -> :class:`~annotator.records.Instance` lists.

The work per batch of images:

1. letterbox each image to the model's square input (1024 px, top-left aligned, as Ultralytics' SAM
   predictor does), normalise, and run the image encoder on the whole batch at once -- on a CPU, the images
   are instead encoded one per task by parallel worker threads (:func:`default_cpu_workers`), which uses
   the cores better than torch's intra-op threads and than batching do;
2. per image, run the prompt encoder and mask decoder once for *all* its boxes;
3. keep a mask only when its SAM score is above ``min_score`` (Ultralytics' SAM ``conf``) and it is not
   empty, and build each :class:`Instance` from *its own* detection (class id, detector confidence, box):
   a dropped mask never shifts the others' classes;
4. upsample the 256x256 mask logits to the original image only inside the window where the mask can be
   positive (``mask_upsample="crop"``), threshold at 0 and keep the tight crop. ``"full"`` upsamples whole
   masks with Ultralytics' own ``scale_masks``, for exact comparisons. The two agree up to float rounding
   of the bilinear weights (pixels whose logit is within ~1e-6 of 0).

Torch and the device stay inside this module: numpy in, numpy out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from annotator.detect import TorchThreads
from annotator.models import load_sam
from annotator.records import Detections, Instance, MaskCrop

SAM_INPUT_PX = 1024  # square input side of every SAM / SAM 2 image encoder
_LOWRES_PX = 256  # side of the mask decoder's logits


class Segmenter:
    """Box-prompted SAM / SAM 2 segmentation.

    Args:
        weights: local weight file.
        sam_name: registered architecture name (``"sam2_t.pt"``...), see :func:`annotator.models.sam_architecture`.
        family: ``"sam"`` (SAM, MobileSAM) or ``"sam2"`` (SAM 2, SAM 2.1).
        device: ``""`` (auto), ``"cpu"``, ``"0"``, ``"cuda:1"``...
        half: bf16 autocast on CUDA (ignored on CPU).
        min_score: drop masks whose SAM score is ``<=`` this.
        mask_upsample: ``"crop"`` (fast, default) or ``"full"`` (Ultralytics' exact whole-image upsampling).
    """

    def __init__(
        self,
        weights: Path,
        sam_name: str,
        family: str,
        *,
        device: str = "",
        half: bool = False,
        min_score: float = 0.25,
        mask_upsample: Literal["crop", "full"] = "crop",
        trust: bool = False,
    ) -> None:
        import torch
        from ultralytics.utils.torch_utils import select_device

        self.device = select_device(device, verbose=False)
        self.threads = TorchThreads(device)  # the CPU threads our model calls use (see TorchThreads)
        self.family = family
        self.model = load_sam(weights, sam_name, trust=trust).to(self.device).float().eval()
        self.min_score = float(min_score)
        self.mask_upsample = mask_upsample
        self._autocast_dtype = torch.bfloat16 if (half and self.device.type == "cuda") else None
        self._mean = torch.tensor([123.675, 116.28, 103.53], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor([58.395, 57.12, 57.375], device=self.device).view(1, 3, 1, 1)
        self._mask_threshold = float(getattr(self.model, "mask_threshold", 0.0))
        self._compiled = False
        self.cpu_workers = default_cpu_workers() if self.device.type == "cpu" else 1
        self._pool = None
        if family == "sam2":
            self._feat_sizes = [(SAM_INPUT_PX // 4, SAM_INPUT_PX // 4), (SAM_INPUT_PX // 8, SAM_INPUT_PX // 8), (SAM_INPUT_PX // 16, SAM_INPUT_PX // 16)]

    # -- public -------------------------------------------------------------------------------------------------
    def __call__(self, images_bgr: Sequence[np.ndarray], detections: Sequence[Detections]) -> list[list[Instance]]:
        """Segment every detection of every image.

        Args:
            images_bgr: ``(H, W, 3)`` uint8 BGR images.
            detections: one :class:`Detections` per image (boxes in that image's pixels).

        Returns:
            One list of :class:`Instance` per image, in detection order, without the dropped masks.
        """
        import torch

        if len(images_bgr) != len(detections):
            raise ValueError(f"got {len(images_bgr)} images but {len(detections)} detection sets")
        out: list[list[Instance]] = [[] for _ in images_bgr]
        todo = [i for i, d in enumerate(detections) if len(d)]
        if not todo:
            return out
        self.threads.apply()
        workers = min(self.cpu_workers, len(todo)) if self.device.type == "cpu" and not self._compiled else 1
        if workers <= 1:
            for i, insts in zip(todo, self._segment([images_bgr[i] for i in todo], [detections[i] for i in todo])):
                out[i] = insts
            return out
        # CPU: the images are encoded in parallel by worker threads, one image per task (batching does not
        # speed a CPU encoder up), each with cores // workers torch threads; torch releases the GIL in its
        # kernels. See default_cpu_workers.
        per_worker = max(1, usable_cores() // workers)
        if self._pool is None or self._pool._max_workers != workers:
            from concurrent.futures import ThreadPoolExecutor

            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sam-cpu")
        futures = [self._pool.submit(self._segment, [images_bgr[i]], [detections[i]], per_worker) for i in todo]
        for i, f in zip(todo, futures):
            out[i] = f.result()[0]
        return out

    def _segment(
        self, images_bgr: Sequence[np.ndarray], detections: Sequence[Detections], threads: int | None = None
    ) -> list[list[Instance]]:
        """Encoder on the images as one batch, then the decoder once per image (all its boxes); every image
        has at least one box. ``threads``: torch threads for this (worker) thread's parallel regions."""
        import torch

        if threads is not None:
            torch.set_num_threads(threads)  # the OpenMP thread count is per calling thread
        with torch.inference_mode(), self._autocast():
            batch = self._preprocess(images_bgr)
            feats = self._encode(batch)
            out = []
            for j, (im, det) in enumerate(zip(images_bgr, detections)):
                logits, scores = self._decode(feats, j, det.xyxy_px, im.shape[:2])
                out.append(self._instances(logits, scores, det, im.shape[:2]))
        return out

    def compile_encoder(self, **compile_kwargs) -> None:
        """``torch.compile`` the image encoder in place (optional speed-up; the first batch of each new batch
        size pays the compilation, minutes on a CPU). Outputs match eager mode to float rounding."""
        import torch

        enc = self.model.image_encoder
        if not isinstance(enc, torch._dynamo.eval_frame.OptimizedModule):
            self.model.image_encoder = torch.compile(enc, **{"dynamic": False, **compile_kwargs})
        self._compiled = True  # compiled graphs run on the calling thread only: no CPU workers

    # -- steps --------------------------------------------------------------------------------------------------
    def _autocast(self):
        import torch

        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self._autocast_dtype)

    def _preprocess(self, images_bgr: Sequence[np.ndarray]):
        """Letterbox to 1024x1024 top-left (pad 114), BGR->RGB, normalise: ``(B, 3, 1024, 1024)`` float32."""
        import torch
        from ultralytics.data.augment import LetterBox

        letterbox = LetterBox((SAM_INPUT_PX, SAM_INPUT_PX), auto=False, center=False)
        arr = np.stack([letterbox(image=im) for im in images_bgr])[..., ::-1].transpose(0, 3, 1, 2)
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device).float()
        return (t - self._mean) / self._std

    def _encode(self, batch):
        """Image encoder on the whole batch. SAM: ``(B, 256, 64, 64)``; SAM 2: dict of batched features."""
        if self.family == "sam":
            return self.model.image_encoder(batch)
        m = self.model
        backbone_out = m.forward_image(batch)
        _, vision_feats, _, _ = m._prepare_backbone_features(backbone_out)
        if m.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + m.no_mem_embed
        b = batch.shape[0]
        feats = [f.permute(1, 2, 0).reshape(b, -1, *hw) for f, hw in zip(vision_feats, self._feat_sizes)]
        return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}

    def _decode(self, feats, j: int, boxes_xyxy_px: np.ndarray, image_hw: tuple[int, int]):
        """All boxes of image ``j`` in one decoder call: ``(N, 256, 256)`` logits and ``(N,)`` scores."""
        import torch

        h, w = image_hw
        r = min(SAM_INPUT_PX / h, SAM_INPUT_PX / w)  # letterbox gain
        boxes = torch.as_tensor(boxes_xyxy_px, dtype=torch.float32, device=self.device) * r
        m = self.model
        if self.family == "sam":
            sparse, dense = m.prompt_encoder(points=None, boxes=boxes, masks=None)
            masks, scores = m.mask_decoder(
                image_embeddings=feats[j : j + 1],
                image_pe=m.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        else:
            pts = boxes.view(-1, 2, 2)
            labels = torch.tensor([[2, 3]], dtype=torch.int32, device=self.device).expand(pts.shape[0], -1)
            sparse, dense = m.sam_prompt_encoder(points=(pts, labels), boxes=None, masks=None)
            masks, scores, _, _ = m.sam_mask_decoder(
                image_embeddings=feats["image_embed"][j : j + 1],
                image_pe=m.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
                repeat_image=pts.shape[0] > 1,
                high_res_features=[f[j : j + 1] for f in feats["high_res_feats"]],
            )
        return masks.flatten(0, 1).float(), scores.flatten(0, 1).float()

    def _instances(self, logits, scores, det: Detections, image_hw: tuple[int, int]) -> list[Instance]:
        keep = (scores > self.min_score).cpu().numpy()
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            return []
        sel = logits[torch_index(idx, logits.device)]
        if self.mask_upsample == "full":
            crops = upsample_full(sel, image_hw, self._mask_threshold)
        else:
            crops = upsample_crops(sel, image_hw, self._mask_threshold)
        scores_np = scores.cpu().numpy()
        out = []
        for k, crop in zip(idx.tolist(), crops):
            if crop.area_px == 0:
                continue  # an empty mask has no polygon; its detection is dropped, nothing else moves
            out.append(
                Instance(
                    class_id=int(det.class_ids[k]),
                    det_conf=float(det.det_conf[k]),
                    box_xyxy_px=det.xyxy_px[k].copy(),
                    sam_score=float(scores_np[k]),
                    mask=crop,
                    det_index=k,
                )
            )
        return out


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_cpu_workers() -> int:
    """Images encoded in parallel on a CPU: one per core, at most 4 (memory: each worker holds its activations).

    Measured on 2 idle cores (docs/performance.md): 2 workers of 1 torch thread encode 1.75x faster than one
    thread and slightly faster than one call with 2 threads. Set ``Segmenter.cpu_workers = 1`` for one
    batched encoder call with the stage's torch threads (:class:`~annotator.detect.TorchThreads`).
    """
    return min(4, usable_cores())


def torch_index(idx: np.ndarray, device):
    import torch

    return torch.as_tensor(idx, dtype=torch.long, device=device)


def lowres_gain(image_hw: tuple[int, int]) -> tuple[float, float]:
    """Low-res mask pixels per original pixel, ``(gain_h, gain_w)``, as Ultralytics' SAM postprocess computes it."""
    g = min(SAM_INPUT_PX / image_hw[0], SAM_INPUT_PX / image_hw[1])
    return tuple(round(o * g) * _LOWRES_PX / SAM_INPUT_PX / o for o in image_hw)  # type: ignore[return-value]


def upsample_full(logits, image_hw: tuple[int, int], threshold: float = 0.0) -> list[MaskCrop]:
    """Ultralytics' exact path: ``ops.scale_masks`` of whole masks to ``image_hw``, threshold, then crop."""
    from ultralytics.utils import ops

    ratio = lowres_gain(image_hw)
    full = ops.scale_masks(logits[None].float(), image_hw, (ratio, (0, 0)), padding=False)[0] > threshold
    return [MaskCrop.from_full(m) for m in full.cpu().numpy()]


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
    lim_h, lim_w = (bottom - 1, right - 1) if exact else (_LOWRES_PX - 1, _LOWRES_PX - 1)
    iy0, iy1, fy = (t.numpy() for t in _interp_taps(h, gain_h, lim_h, dtype))
    ix0, ix1, fx = (t.numpy() for t in _interp_taps(w, gain_w, lim_w, dtype))
    lg = logits.detach().to(device="cpu", dtype=dtype).numpy()  # numpy gathers: ~10x faster than torch indexing
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
