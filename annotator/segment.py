"""Segmenter stage: SAM / SAM 2 / MobileSAM with box prompts -> :class:`~annotator.records.Instance` lists.

Three steps, so that an engine can run them on different threads (``__call__`` chains them):

1. :meth:`Segmenter.prepare` (CPU pool, numpy/cv2 only): letterbox one image to the 1024 px square input,
   top-left aligned, pad 114, RGB, as Ultralytics' SAM predictor does;
2. :meth:`Segmenter.infer` (the model thread): upload a batch of prepared images, normalise on the device, run
   the image encoder on fixed-shape chunks of ``encoder_batch`` images (on a CPU, ``cpu_workers`` threads
   encode one chunk per task instead, see :func:`default_cpu_workers`), then the prompt encoder and mask
   decoder once for all boxes of all images (each box indexes its image's features) and one device-to-host
   copy of all low-res logits and scores: a :class:`SamOutput` per image. On the CUDA code path
   (:mod:`annotator.code_path`) the engine calls its two halves instead: :meth:`Segmenter.encode_batch` (every image,
   queued before the detector's results are read back) and :meth:`Segmenter.decode_batch` (decoder calls padded to
   a few bucket sizes, :func:`decoder_spans`);
3. :meth:`Segmenter.finish` (CPU pool): keep a mask only when its SAM score is above ``min_score``
   (Ultralytics' SAM ``conf``) and it is not empty, upsample it to the image (see :mod:`annotator.mask_upsample`)
   and build each :class:`Instance` from *its own* detection (class id, detector confidence, box): a dropped
   mask never shifts the others' classes.

Prompts beyond the box (``Detections.points_xy_px`` / ``point_labels`` from ``prompts: points``, the detector's
masks with ``detector_masks: prompt``) take :meth:`Segmenter._decode_groups`: per image, the objects that share
a layout are embedded by SAM's own prompt encoder and decoded together (as Ultralytics' ``SAM(points=...,
labels=..., bboxes=...)``); box-only batches keep the fast path below.

``mask_upsample="full"`` (``compat="ultralytics"``) keeps Ultralytics' exact results: its whole-image
``scale_masks``, and the decoder run per image as Ultralytics runs it (the batched decoder differs in the last
float bits, ~1e-6, which could move a pixel on the threshold).

Example:
    >>> seg = Segmenter(Path("sam2_t.pt"), "sam2_t.pt", "sam2", device="cpu")  # doctest: +SKIP
    >>> x = np.stack([seg.prepare(im) for im in images_bgr])  # (B, 1024, 1024, 3) uint8  # doctest: +SKIP
    >>> outs = seg.infer(x, [im.shape[:2] for im in images_bgr], dets)  # doctest: +SKIP
    >>> [seg.finish(o, d, im.shape[:2]) for o, d, im in zip(outs, dets, images_bgr)]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from annotator import sam_ops
from annotator.code_path import cuda_code_path
from annotator.detect import TorchThreads
from annotator.mask_upsample import LOWRES_PX, SAM_INPUT_PX, MaskFinisher, input_gain
from annotator.models import load_sam
from annotator.records import Detections, Instance

__all__ = ["SAM_INPUT_PX", "MaskFinisher", "SamOutput", "Segmenter", "default_cpu_workers", "letterbox_rgb", "usable_cores"]


@dataclass(frozen=True)
class SamOutput:
    """The decoder's output for the ``N`` boxes of one image, in detection order (host numpy).

    Attributes:
        logits_lowres: ``(N, 256, 256)`` float32 mask logits in the letterboxed low-res frame.
        scores: ``(N,)`` float32 SAM scores (predicted IoU).
    """

    logits_lowres: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> SamOutput:
        return cls(np.zeros((0, LOWRES_PX, LOWRES_PX), np.float32), np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return len(self.scores)


def letterbox_rgb(image_bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 BGR -> ``(1024, 1024, 3)`` uint8 RGB, resized (bilinear) into the top-left corner, pad 114.

    Exactly Ultralytics' ``LetterBox((1024, 1024), auto=False, center=False)`` followed by BGR->RGB (tested), in
    numpy/cv2 only. ``out``: an optional ``(1024, 1024, 3)`` uint8 buffer to write into (e.g. a pinned batch row).

    Example:
        >>> letterbox_rgb(np.zeros((480, 640, 3), np.uint8))[767:769, 0, 0].tolist()  # content ends at row 768
        [0, 114]
    """
    import cv2

    h, w = image_bgr.shape[:2]
    r = min(SAM_INPUT_PX / h, SAM_INPUT_PX / w)
    nw, nh = max(round(w * r), 1), max(round(h * r), 1)
    resized = image_bgr if (w, h) == (nw, nh) else cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if out is None:
        out = np.empty((SAM_INPUT_PX, SAM_INPUT_PX, 3), np.uint8)
    out[:nh, :nw] = resized[..., ::-1]
    out[nh:] = 114
    out[:nh, nw:] = 114
    return out


class Segmenter:
    """Box-prompted SAM / SAM 2 segmentation.

    Args:
        weights: local weight file.
        sam_name: registered architecture name (``"sam2_t.pt"``...), see :func:`annotator.models.sam_architecture`.
        family: ``"sam"`` (SAM, MobileSAM) or ``"sam2"`` (SAM 2, SAM 2.1).
        device: ``""`` (auto), ``"cpu"``, ``"0"``, ``"cuda:1"``...
        half: bf16 autocast on CUDA (ignored on CPU).
        min_score: drop masks whose SAM score is ``<=`` this.
        mask_upsample: ``"crop"`` (fast, default) or ``"full"`` (Ultralytics' exact whole-image upsampling and
            per-image decoder calls).

    Attributes (settable):
        encoder_batch: images per image-encoder call (1). On CUDA the last chunk of a batch is padded up to it, so
            every call has one shape (``torch.compile`` / CUDA graphs); set it to the engine's batch size there.
        cpu_workers: CPU only: threads that encode one chunk each in parallel (:func:`default_cpu_workers`).
        max_decoder_boxes: boxes per mask-decoder call (256 on CUDA: ~40 MB of features per box in fp32; 4 on a
            CPU, where small calls are faster). The calls group boxes by position, not by image.
        decoder_buckets: CUDA code path: the sizes a decoder call is padded to, the smallest that fits
            (32/64/128/256; calls of ``max_decoder_boxes`` beyond it), see :func:`decoder_spans`.
        batch_decoder: one decoder call for the boxes of all images (default), or one per image (compat mode).
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
        self._mean, self._std = sam_ops.mean_std(self.device)
        self._mask_threshold = float(getattr(self.model, "mask_threshold", 0.0))
        self._compiled = False
        self._cuda = cuda_code_path(self.device)  # fixed-shape calls (also on a CPU with ANNOTATOR_CUDA_CODE_PATH=1)
        self.encoder_batch = 1
        self.cpu_workers = default_cpu_workers() if self.device.type == "cpu" and not self._cuda else 1
        # CPU: small decoder calls are faster (cache): 20 boxes took 1.9 s in calls of 2, 2.4 s of 5, 3.8 s of 20
        self.max_decoder_boxes = 256 if self._cuda else 4
        self.decoder_buckets: tuple[int, ...] = (32, 64, 128, 256)  # CUDA code path: call sizes (decoder_spans)
        self.batch_decoder = mask_upsample != "full"
        self.mask_prompts = False  # detector_masks "prompt": the detections' det_masks go to SAM as mask_input
        self.finisher = MaskFinisher(self.min_score, mask_upsample, self._mask_threshold)
        self._pool = None

    # -- the three steps ----------------------------------------------------------------------------------------
    def prepare(self, image_bgr: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 BGR -> ``(1024, 1024, 3)`` uint8 RGB letterboxed input (thread-safe, no torch)."""
        return letterbox_rgb(image_bgr)

    def infer(
        self, prepared, image_hws: Sequence[tuple[int, int]], detections: Sequence[Detections]
    ) -> list[SamOutput]:
        """Encoder, prompt encoder and mask decoder for a batch of prepared images (call on the model thread).

        Args:
            prepared: ``(B, 1024, 1024, 3)`` uint8 from :meth:`prepare`, numpy or a torch uint8 tensor (pinned CPU
                memory uploads asynchronously).
            image_hws: original ``(H, W)`` of each image (the boxes' frame).
            detections: one :class:`Detections` per image.

        Returns:
            One :class:`SamOutput` per image (empty for an image without boxes). Only images with boxes are encoded.
        """
        import torch

        todo, counts = self._check(prepared, image_hws, detections)
        if not todo:
            return [SamOutput.empty() for _ in image_hws]
        self.threads.apply()
        with torch.inference_mode():
            boxes, img_idx = self._boxes(image_hws, detections, todo, range(len(todo)))  # queued before the encoder
            extra = self._extra_prompts(image_hws, detections, todo)
            workers = min(self.cpu_workers, len(todo)) if self.device.type == "cpu" and not self._compiled else 1
            if workers > 1:
                logits, scores = self._per_image_on_cpu_workers(prepared, todo, boxes, counts, workers, extra)
            else:
                feats = self._encode_images(prepared, todo)
                with self._autocast():
                    logits, scores = self._decode(feats, boxes, img_idx, [counts[i] for i in todo], extra)
            return self._to_host(logits, scores, todo, counts, len(image_hws))

    def encode_batch(self, prepared) -> list:
        """[model thread, CUDA code path] Queue the image encoder on every image of a batch (``(B, 1024, 1024, 3)``
        uint8 from :meth:`prepare`), in fixed chunks of ``encoder_batch``, before the boxes are known: returns the
        feature list (device tensors, row ``i`` = image ``i``) for :meth:`decode_batch`. Nothing is read back."""
        import torch

        self.threads.apply()
        with torch.inference_mode():
            return self._encode_images(prepared, list(range(len(prepared))))

    def decode_batch(
        self, feats: list, image_hws: Sequence[tuple[int, int]], detections: Sequence[Detections]
    ) -> list[SamOutput]:
        """[model thread] Prompt encoder and mask decoder for the boxes of a batch whose images were all encoded by
        :meth:`encode_batch`, then one device-to-host copy: one :class:`SamOutput` per image, as :meth:`infer`."""
        import torch

        todo, counts = self._check(image_hws, image_hws, detections)
        if not todo:
            return [SamOutput.empty() for _ in image_hws]
        self.threads.apply()
        with torch.inference_mode():
            boxes, img_idx = self._boxes(image_hws, detections, todo, todo)
            extra = self._extra_prompts(image_hws, detections, todo)
            with self._autocast():
                logits, scores = self._decode(feats, boxes, img_idx, [counts[i] for i in todo], extra, rows=todo)
            return self._to_host(logits, scores, todo, counts, len(image_hws))

    @staticmethod
    def _to_host(logits, scores, todo: list[int], counts: list[int], n_images: int) -> list[SamOutput]:
        """All boxes' logits and scores in ONE device-to-host copy, split per image on the host."""
        import torch

        n = logits.shape[0]
        host = torch.cat([scores.reshape(n, 1).float(), logits.reshape(n, -1).float()], 1).cpu().numpy()
        lg_all = host[:, 1:].reshape(n, LOWRES_PX, LOWRES_PX)
        out = [SamOutput.empty() for _ in range(n_images)]
        start = 0
        for i in todo:
            stop = start + counts[i]
            out[i] = SamOutput(lg_all[start:stop], host[start:stop, 0])
            start = stop
        return out

    def finish(self, out: SamOutput, det: Detections, image_hw: tuple[int, int]) -> list[Instance]:
        """Score filter, upsampling and :class:`Instance` records for one image (thread-safe, CPU only): see
        :class:`MaskFinisher`."""
        return self.finisher(out, det, image_hw)

    def __call__(self, images_bgr: Sequence[np.ndarray], detections: Sequence[Detections]) -> list[list[Instance]]:
        """Segment every detection of every image: :meth:`prepare`, :meth:`infer`, :meth:`finish` in turn.

        Args:
            images_bgr: ``(H, W, 3)`` uint8 BGR images.
            detections: one :class:`Detections` per image (boxes in that image's pixels).

        Returns:
            One list of :class:`Instance` per image, in detection order, without the dropped masks.
        """
        if len(images_bgr) != len(detections):
            raise ValueError(f"got {len(images_bgr)} images but {len(detections)} detection sets")
        out: list[list[Instance]] = [[] for _ in images_bgr]
        todo = [i for i, d in enumerate(detections) if len(d)]
        if not todo:
            return out
        hws = [tuple(images_bgr[i].shape[:2]) for i in todo]
        dets = [detections[i] for i in todo]
        prepared = np.stack([self.prepare(images_bgr[i]) for i in todo])
        for i, hw, d, o in zip(todo, hws, dets, self.infer(prepared, hws, dets)):
            out[i] = self.finish(o, d, hw)
        return out

    def infer_per_image(
        self, prepared, image_hws: Sequence[tuple[int, int]], detections: Sequence[Detections]
    ) -> list[SamOutput]:
        """Reference for tests and benchmarks: :meth:`infer` with the decoder called per image exactly as
        Ultralytics calls it (its prompt encoder, ``repeat_image``) and one device-to-host copy per image."""
        import torch

        todo, _ = self._check(prepared, image_hws, detections)
        out = [SamOutput.empty() for _ in image_hws]
        if not todo:
            return out
        self.threads.apply()
        with torch.inference_mode():
            feats = self._encode_images(prepared, todo)
            self.threads.apply()
            for j, i in enumerate(todo):
                boxes = torch.as_tensor(detections[i].xyxy_px, dtype=torch.float32, device=self.device)
                boxes = boxes * input_gain(image_hws[i])
                with self._autocast():
                    lg, sc = sam_ops.decode_one_image(self.model, self.family, feats, j, boxes, reference=True)
                out[i] = SamOutput(lg.float().cpu().numpy(), sc.float().cpu().numpy())
        return out

    def compile_encoder(self, **compile_kwargs) -> None:
        """``torch.compile`` the image encoder in place (optional speed-up; the first call of each new batch
        shape pays the compilation, minutes on a CPU). Outputs match eager mode to float rounding."""
        import torch

        enc = self.model.image_encoder
        if not isinstance(enc, torch._dynamo.eval_frame.OptimizedModule):
            self.model.image_encoder = torch.compile(enc, **{"dynamic": False, **compile_kwargs})
        self._compiled = True  # compiled graphs run on the calling thread only: no CPU workers

    # -- internals ----------------------------------------------------------------------------------------------
    def _autocast(self):
        import torch

        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self._autocast_dtype)

    @staticmethod
    def _check(prepared, image_hws, detections) -> tuple[list[int], list[int]]:
        if not (len(prepared) == len(image_hws) == len(detections)):
            raise ValueError(
                f"got {len(prepared)} prepared images, {len(image_hws)} image sizes, {len(detections)} detection sets"
            )
        counts = [len(d) for d in detections]
        return [i for i, c in enumerate(counts) if c], counts

    def _upload(self, host_array):
        """numpy / torch CPU tensor -> the model's device, asynchronously (pinned memory) and without a host sync."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(host_array)) if isinstance(host_array, np.ndarray) else host_array
        return t.to(self.device, non_blocking=True)

    def _boxes(self, image_hws, detections, todo, rows=None):
        """All boxes of the ``todo`` images in the 1024 px frame ``(N, 4)`` and each box's feature row ``(N,)``
        (``rows[k]``: the row of image ``todo[k]``, default ``k``), on the device (uploaded without a host sync)."""
        rows = range(len(todo)) if rows is None else rows
        boxes = np.concatenate(
            [detections[i].xyxy_px.astype(np.float32, copy=False) * input_gain(image_hws[i]) for i in todo]
        ).astype(np.float32, copy=False)
        img_idx = np.repeat(np.asarray(list(rows), np.int64), [len(detections[i]) for i in todo])
        return self._upload(boxes), self._upload(img_idx.astype(np.int64))

    def _encode_images(self, prepared, todo: list[int]) -> list:
        """Feature list (see :mod:`annotator.sam_ops`) of the ``todo`` images, in order, encoded in chunks of
        ``encoder_batch`` images (on CUDA the last one padded: fixed shapes)."""
        x = self._upload(prepared)
        if len(todo) < x.shape[0]:
            x = x.index_select(0, self._upload(np.asarray(todo, np.int64)))
        eb = max(1, int(self.encoder_batch))
        chunks = [x[k : k + eb] for k in range(0, x.shape[0], eb)]
        return sam_ops.cat_feats([self._encode_chunk(c, eb if self._cuda else 0) for c in chunks])

    def _per_image_on_cpu_workers(self, prepared, todo: list[int], boxes, counts: list[int], workers: int, extra=None):
        """CPU: each image encoded *and* decoded in its own task by ``workers`` threads of ``cores // workers``
        torch threads (torch releases the GIL in its kernels), which uses the cores better than torch's
        intra-op threads or batching do (see :func:`default_cpu_workers`). Same arithmetic as one image alone."""
        import torch

        per_worker = max(1, usable_cores() // workers)
        if self._pool is None or self._pool._max_workers != workers:
            from concurrent.futures import ThreadPoolExecutor

            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sam-cpu")
        x = self._upload(prepared)
        starts = np.concatenate([[0], np.cumsum([counts[i] for i in todo])]).tolist()

        def task(k: int, i: int):
            torch.set_num_threads(per_worker)  # the OpenMP thread count is per calling thread
            with torch.inference_mode():
                feats = self._encode_chunk(x[i : i + 1], 0)
                one = torch.zeros(starts[k + 1] - starts[k], dtype=torch.long)
                with self._autocast():
                    sub = extra.slice(starts[k], starts[k + 1]) if extra is not None else None
                    return self._decode(feats, boxes[starts[k] : starts[k + 1]], one, [counts[i]], sub)

        parts = [f.result() for f in [self._pool.submit(task, k, i) for k, i in enumerate(todo)]]
        self.threads.apply()
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _encode_chunk(self, chunk, pad_to: int) -> list:
        """Encoder on ``(n, 1024, 1024, 3)`` uint8 (device), zero-padded up to ``pad_to`` images; features of ``n``."""
        import torch

        n = chunk.shape[0]
        if pad_to > n:
            chunk = torch.cat([chunk, chunk.new_zeros((pad_to - n, *chunk.shape[1:]))])
        with self._autocast():
            feats = sam_ops.encode(self.model, self.family, sam_ops.normalise(chunk, self._mean, self._std))
        return [f[:n] for f in feats] if pad_to > n else feats

    def _decode(self, feats: list, boxes, img_idx, counts: list[int], extra: ExtraPrompts | None = None, rows=None):
        """``(N, 256, 256)`` logits and ``(N,)`` scores of all boxes (box ``k`` of feature row ``img_idx[k]``).

        ``counts``: boxes per image, in box order; ``rows``: each of those images' feature row (default ``0..``).
        """
        import torch

        rows = list(range(len(counts))) if rows is None else [int(r) for r in rows]
        if extra is not None:
            return self._decode_groups(feats, boxes, counts, extra, rows)

        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
        if self.family == "sam2" and self.batch_decoder:
            # An image's masks must not depend on which other images share its batch (a resumed run writes the
            # bytes of an uninterrupted one): on CUDA every call has one of a few fixed sizes (decoder_spans: the
            # last call padded with copies of a box; also what CUDA graphs need); on CPU calls never mix images.
            step = max(1, int(self.max_decoder_boxes))
            box_rows = np.repeat(np.asarray(rows, np.int64), counts)  # host: each box's feature row
            if self._cuda:
                spans = decoder_spans(boxes.shape[0], step, self.decoder_buckets)
            else:
                spans = [(a, min(a + step, b), min(a + step, b) - a)
                         for a0, b in zip(starts[:-1], starts[1:]) for a in range(a0, b, step)]  # fmt: skip
            parts = []
            for a, b, size in spans:
                bx, ix, pad = boxes[a:b], img_idx[a:b], size - (b - a)
                if pad:
                    bx = torch.cat([bx, bx[-1:].expand(pad, -1)])
                    ix = torch.cat([ix, ix[-1:].expand(pad)])
                one = int(box_rows[a]) if box_rows[a] == box_rows[b - 1] else None  # boxes are grouped by image
                lg, sc = sam_ops.decode_sam2(self.model, feats, bx, ix, one_image=one)
                parts.append((lg[: b - a], sc[: b - a]) if pad else (lg, sc))
        else:  # per image: SAM's decoder always repeats the image embedding; SAM 2 in compat mode
            parts = [
                sam_ops.decode_one_image(self.model, self.family, feats, rows[j], boxes[a:b])
                for j, (a, b) in enumerate(zip(starts[:-1], starts[1:]))
            ]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


    def _extra_prompts(self, image_hws, detections, todo) -> ExtraPrompts | None:
        """Points and mask prompts of the ``todo`` images' objects, on the device; None when every object is a box
        alone (the fast box-only path)."""
        dets = [detections[i] for i in todo]
        with_masks = self.mask_prompts and any(d.det_masks is not None for d in dets)
        if all(d.points_xy_px is None for d in dets) and not with_masks:
            return None
        n_points = np.concatenate([d.n_points() for d in dets])
        k = int(n_points.max(initial=0))
        pts = np.zeros((len(n_points), k, 2), np.float32)
        labels = np.full((len(n_points), k), -1, np.int32)
        start = 0
        for i, d in zip(todo, dets):
            if d.points_xy_px is not None and k:
                kd = d.points_xy_px.shape[1]
                pts[start : start + len(d), :kd] = d.points_xy_px * np.float32(input_gain(image_hws[i]))
                labels[start : start + len(d), :kd] = d.point_labels
            start += len(d)
        masks = None
        has_mask = np.zeros(len(n_points), bool)
        if with_masks:
            from annotator.detector_masks import mask_prompts_lowres

            parts, start = [], 0
            for i, d in zip(todo, dets):
                if d.det_masks is not None:
                    parts.append(mask_prompts_lowres(d.det_masks, image_hws[i]))
                    has_mask[start : start + len(d)] = True
                else:
                    parts.append(np.zeros((len(d), 1, LOWRES_PX, LOWRES_PX), np.float32))
                start += len(d)
            masks = self._upload(np.concatenate(parts))
        box_used = np.concatenate([d.boxes_used() for d in dets])
        return ExtraPrompts(self._upload(pts), self._upload(labels), masks, n_points, box_used, has_mask)

    def _decode_groups(self, feats: list, boxes, counts: list[int], extra: ExtraPrompts, rows: list[int]):
        """Decoder calls for point / mask prompts: per image, the objects that share a layout (box or not, number
        of points, mask or not) together, as Ultralytics decodes one image's prompts; the batched SAM 2 decoder
        (default) gathers features per prompt in calls of at most ``max_decoder_boxes``, compat mode and SAM /
        MobileSAM broadcast the image's features. Calls never mix two images, so an image's masks do not depend
        on its batch."""
        import torch

        n = boxes.shape[0]
        logits = scores = None
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
        batched = self.family == "sam2" and self.batch_decoder
        step = max(1, int(self.max_decoder_boxes)) if batched else n
        for j, (a, b) in zip(rows, zip(starts[:-1], starts[1:])):
            groups: dict[tuple, list[int]] = {}
            for q in range(a, b):
                key = (int(extra.n_points[q]), bool(extra.box_used[q]), bool(extra.has_mask[q]))
                groups.setdefault(key, []).append(q)
            for (k, use_box, use_mask), idx in groups.items():
                for c in range(0, len(idx), step):
                    sel = self._upload(np.asarray(idx[c : c + step], np.int64))
                    pts = extra.points.index_select(0, sel)[:, :k] if k else None
                    lab = extra.labels.index_select(0, sel)[:, :k] if k else None
                    msk = extra.masks.index_select(0, sel) if use_mask else None
                    sparse, dense = sam_ops.embed_prompts(
                        self.model, self.family, boxes.index_select(0, sel), use_box, pts, lab, msk
                    )
                    if batched:
                        img = torch.full((len(sel),), j, dtype=torch.long, device=boxes.device)
                        lg, sc = sam_ops.decode_embedded(self.model, self.family, feats, sparse, dense, img_idx=img,
                                                          one_image=j)
                    else:
                        lg, sc = sam_ops.decode_embedded(self.model, self.family, feats, sparse, dense, j=j)
                    if logits is None:
                        logits = lg.new_empty((n, *lg.shape[1:]))
                        scores = sc.new_empty((n,))
                    logits[sel] = lg
                    scores[sel] = sc
        return logits, scores


@dataclass(frozen=True)
class ExtraPrompts:
    """Prompts beyond the box for the ``N`` objects of a batch (device tensors; host layout arrays).

    Attributes:
        points: ``(N, K, 2)`` float32 clicks in the 1024 px input frame (padded).
        labels: ``(N, K)`` int32 (1 on, 0 off, -1 padding).
        masks: ``(N, 1, 256, 256)`` float32 mask prompts, or None.
        n_points: ``(N,)`` host int: real points per object. box_used, has_mask: ``(N,)`` host bool.
    """

    points: object
    labels: object
    masks: object
    n_points: np.ndarray
    box_used: np.ndarray
    has_mask: np.ndarray

    def slice(self, a: int, b: int) -> ExtraPrompts:
        m = self.masks[a:b] if self.masks is not None else None
        return ExtraPrompts(self.points[a:b], self.labels[a:b], m, self.n_points[a:b], self.box_used[a:b],
                            self.has_mask[a:b])  # fmt: skip


def decoder_spans(n: int, largest: int, buckets: Sequence[int] = ()) -> list[tuple[int, int, int]]:
    """Fixed-size decoder calls for ``n`` boxes: ``(start, stop, size)`` per call, ``size`` the smallest of
    ``buckets`` (and ``largest``) that holds ``stop - start`` boxes; calls of ``largest`` boxes while more remain.

    Example:
        >>> decoder_spans(300, 256, (32, 64, 128, 256))
        [(0, 256, 256), (256, 300, 64)]
        >>> decoder_spans(31, 256, (32, 64, 128, 256)), decoder_spans(33, 256, (32, 64, 128, 256))
        ([(0, 31, 32)], [(0, 33, 64)])
    """
    sizes = sorted({int(b) for b in buckets if 0 < int(b) < largest} | {int(largest)})
    spans = []
    for a in range(0, n, largest):
        m = min(largest, n - a)
        spans.append((a, a + m, next(s for s in sizes if s >= m)))
    return spans


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
    thread and slightly faster than one call with 2 threads. Set ``Segmenter.cpu_workers = 1`` (and
    ``encoder_batch`` to the batch size) for one batched encoder call with the stage's torch threads
    (:class:`~annotator.detect.TorchThreads`).
    """
    return min(4, usable_cores())
