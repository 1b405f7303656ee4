"""The SAM 2 video tracker: SAM 2's memory propagates every object; detector keyframes prompt, match and start them.

Per frame (``step``), on the model's device:

1. the frame is letterboxed to 1024 px (top-left, pad 114) and encoded once by SAM 2's image encoder, exactly as
   Ultralytics' ``SAM2VideoPredictor`` preprocesses it;
2. every live track is propagated by ``SAM2Model._track_step`` against *its own* memory bank (tracks started or
   re-prompted on different frames have different histories). Tracks whose banks hold the same frames (e.g. all
   started on the same keyframe and refreshed together) run as one batch;
3. on a keyframe (``detections`` not None) each box is decoded alone, without memory (SAM 2's semantics for a
   prompt on a frame not yet tracked, as ``add_new_prompts``), and :class:`~annotator.video.track_book.TrackBook`
   matches those masks to the propagated ones (low-res mask IoU, greedy, ``match_iou``): a matched box
   refreshes its track (its mask replaces the propagated one and the frame becomes a conditioning frame), an
   unmatched box starts a new track (new id, never reused), a track without a mask for ``max_missing``
   consecutive keyframes ends ``"lost"`` and its memory is freed;
4. the frame's masks are encoded into memory: the prompted ones as Ultralytics consolidates prompted frames
   (binarised masks, object present), the propagated ones as ``track_step`` does; memory features are stored
   in float16, as Ultralytics stores them;
5. the masks are upsampled to the frame as Ultralytics' predictor does (``ops.scale_masks``) and, with
   ``non_overlap`` (Ultralytics' video default), each pixel goes to the object with the highest logit.

Memory stays flat however long the video: a track keeps its latest ``max_cond_frames`` conditioning frames and
the non-conditioning frames of Ultralytics' pruning window (``frame >= t - num_maskmem``: the ``num_maskmem - 1``
frames memory attention reads plus the two older object pointers Ultralytics keeps, ``num_maskmem + 1`` at most);
image features live for one ``step``. :meth:`SAM2Tracker.memory_entries` counts what is stored.

SAM 2's frame index is the tracker's own step counter (0, 1, 2... over the frames it is fed), so with a
``frame_stride`` the memory sees consecutive processed frames as consecutive, as it needs; outputs use the
source ``frame_index``. With one prompt frame and no later keyframes, masks equal ``SAM2VideoPredictor``'s
(tested bit for bit on a random SAM 2-tiny).

Example:
    >>> tracker = SAM2Tracker(Path("sam2_t.pt"), "sam2_t.pt", max_missing=3)  # doctest: +SKIP
    >>> objs = tracker.step(frame_bgr, 0, detections)  # doctest: +SKIP
    >>> [(o.track_id, o.class_id, o.mask.area_px) for o in objs]  # doctest: +SKIP
    [(1, 0, 5120), (2, 2, 811)]
    >>> tracker.memory_entries()  # {track_id: MemoryCount(cond=1, non_cond=0)}  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from annotator.mask_upsample import LOWRES_PX, SAM_INPUT_PX, input_gain, lowres_gain
from annotator.records import Detections, MaskCrop
from annotator.video.track_book import KeyframePlan, TrackBook
from annotator.video.tracking import TrackedObject, TrackSummary

#: object-score logit given to prompted frames when their memory is encoded (Ultralytics' consolidation default:
#: a prompted object is present, sigmoid(10) ~ 1)
_PROMPTED_OBJ_SCORE = 10.0


@dataclass(frozen=True)
class MemoryCount:
    """Stored memory entries of one track: conditioning (prompted) and non-conditioning (propagated) frames."""

    cond: int
    non_cond: int


@dataclass
class _Entry:
    """One frame in one track's memory: ``maskmem (1, C_mem, 64, 64)`` float16 and ``obj_ptr (1, C)``."""

    maskmem: object
    obj_ptr: object


@dataclass
class _Bank:
    """One track's memory, keyed by the tracker's step index (insertion order is time order)."""

    cond: dict[int, _Entry] = field(default_factory=dict)
    non_cond: dict[int, _Entry] = field(default_factory=dict)

    def history(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(self.cond), tuple(self.non_cond)


@dataclass
class _Out:
    """One track's SAM output on the current frame: ``lowres (1, 1, 256, 256)`` logits, ``obj_ptr (1, C)``,
    ``obj_score (1, 1)`` logit, the predicted IoU, and whether a detection prompted it."""

    lowres: object
    obj_ptr: object
    obj_score: object
    iou: float
    prompted: bool


class SAM2Tracker:
    """SAM 2 memory tracking with detector keyframes (implements :class:`~annotator.video.tracking.VideoTracker`).

    Args:
        weights: a SAM 2 / SAM 2.1 checkpoint (state dict).
        sam_name: its registered name, e.g. ``"sam2_t.pt"`` (:func:`annotator.models.sam_architecture`).
        device: ``""`` (auto), ``"cpu"``, ``"0"``, ``"cuda:1"``...
        half: bf16 autocast on CUDA (ignored on CPU); memory is stored in float16 either way.
        match_iou: mask IoU at which a detection refreshes a track (greedy matching, see
            :mod:`annotator.video.matching`).
        max_missing: consecutive keyframes without a mask after which a track ends ``"lost"``.
        max_unconfirmed: consecutive keyframes with a mask but no matching detection after which a track ends
            ``"unconfirmed"``; None (default): a visible track lives on, as in SAM 2.
        max_cond_frames: conditioning (prompted) frames each track keeps, the latest ones (``>= 1``).
        non_overlap: each pixel to one object at most (the highest logit), as Ultralytics' video predictor.
        video_frames: the number of frames the tracker will be fed, when known. SAM 2 scales its object-pointer
            time encoding by ``min(video_frames, 16)``; None (a long or unknown video) means 16. Only short videos
            (under 16 processed frames) differ; set it to reproduce Ultralytics on those.
        trust: load a checkpoint with full unpickling (see :func:`annotator.models.load_sam`).

    Raises:
        ModelLoadError / WeightsNotFoundError: from loading; ValueError: a SAM (1) checkpoint or a bad argument.
    """

    def __init__(
        self,
        weights: Path,
        sam_name: str,
        *,
        device: str = "",
        half: bool = False,
        match_iou: float = 0.5,
        max_missing: int = 3,
        max_unconfirmed: int | None = None,
        max_cond_frames: int = 4,
        non_overlap: bool = True,
        video_frames: int | None = None,
        trust: bool = False,
    ) -> None:
        import torch
        from ultralytics.utils.torch_utils import select_device

        from annotator import sam_ops
        from annotator.detect import TorchThreads
        from annotator.models import load_sam, sam_architecture

        _, family = sam_architecture(sam_name)
        if family != "sam2":
            raise ValueError(f"video tracking needs a SAM 2 model (sam2*_.pt); {sam_name!r} is a {family} model")
        if int(max_cond_frames) < 1:
            raise ValueError(f"max_cond_frames must be >= 1, got {max_cond_frames}")
        self.device = select_device(device, verbose=False)
        self.threads = TorchThreads(device)
        self.model = load_sam(Path(weights), sam_name, trust=trust).to(self.device).float().eval()
        self.model.set_binarize(True)  # as SAM2VideoPredictor: prompted masks enter memory binarised
        self.max_cond_frames = int(max_cond_frames)
        self.non_overlap = bool(non_overlap)
        self.video_frames = video_frames
        self.book = TrackBook(match_iou=float(match_iou), max_missing=int(max_missing), max_unconfirmed=max_unconfirmed)
        self._autocast_dtype = torch.bfloat16 if (half and self.device.type == "cuda") else None
        self._mean, self._std = sam_ops.mean_std(self.device)
        self._threshold = float(getattr(self.model, "mask_threshold", 0.0))
        self._banks: dict[int, _Bank] = {}
        self._pos_enc: list | None = None  # the memory's spatial position encoding, the same for every entry
        self._t = 0  # SAM 2's frame index: the number of frames stepped so far
        self._last_frame_index: int | None = None

    # -- the VideoTracker protocol --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every track and its memory: the next :meth:`step` starts a new video (ids from 1)."""
        self.book.reset()
        self._banks.clear()
        self._t = 0
        self._last_frame_index = None

    def step(self, frame_bgr: np.ndarray, frame_index: int, detections: Detections | None) -> list[TrackedObject]:
        """Track every live object onto ``frame_bgr`` (``(H, W, 3)`` uint8 BGR, source frame ``frame_index``).

        ``detections`` (boxes in this frame's pixels) make it a keyframe: see the module docstring. Returns the
        objects with a non-empty mask on this frame, by ``track_id``.

        Raises:
            ValueError: a frame that is not ``(H, W, 3)`` uint8, or a ``frame_index`` not after the previous one.
        """
        import torch

        if not (isinstance(frame_bgr, np.ndarray) and frame_bgr.ndim == 3 and frame_bgr.shape[2] == 3
                and frame_bgr.dtype == np.uint8 and min(frame_bgr.shape[:2]) > 0):
            shape = getattr(frame_bgr, "shape", None)
            raise ValueError(f"frame {frame_index}: expected an (H, W, 3) uint8 BGR image, got {shape}")
        if self._last_frame_index is not None and frame_index <= self._last_frame_index:
            raise ValueError(f"frame {frame_index} comes after frame {self._last_frame_index}: frames must increase")
        self.threads.apply()
        hw = (int(frame_bgr.shape[0]), int(frame_bgr.shape[1]))
        t = self._t
        with torch.inference_mode(), self._autocast():
            backbone = self._encode(frame_bgr)
            outs = self._propagate(t, backbone)
            plan = KeyframePlan()
            if detections is not None:
                det_outs = [self._prompt_box(t, backbone, box, hw) for box in detections.xyxy_px]
                plan = self._match(outs, det_outs, detections, hw)
                for tid in plan.lost:
                    del outs[tid]
                    del self._banks[tid]
                for tid, d in plan.prompted.items():
                    outs[tid] = det_outs[d]
                    self._banks.setdefault(tid, _Bank())
            self._remember(t, backbone, outs)
            del backbone  # this frame's image features: not kept
            result = self._finish(frame_index, outs, hw)
        self._t += 1
        self._last_frame_index = int(frame_index)
        return result

    def tracks(self) -> list[TrackSummary]:
        """Every track started since :meth:`reset`, by id (class by vote, ties to the earliest)."""
        return self.book.summaries()

    # -- introspection --------------------------------------------------------------------------------------------
    def memory_entries(self) -> dict[int, MemoryCount]:
        """``{track_id: MemoryCount}`` of the live tracks' stored memory frames."""
        return {tid: MemoryCount(len(b.cond), len(b.non_cond)) for tid, b in sorted(self._banks.items())}

    def memory_nbytes(self) -> int:
        """Bytes of every stored memory tensor (mask memories, object pointers, the shared position encoding)."""
        n = sum(int(p.nbytes) for p in self._pos_enc or [])
        for bank in self._banks.values():
            for e in (*bank.cond.values(), *bank.non_cond.values()):
                n += int(e.maskmem.nbytes) + int(e.obj_ptr.nbytes)
        return n

    @property
    def memory_bound(self) -> MemoryCount:
        """The most entries a track ever keeps: ``max_cond_frames`` and ``num_maskmem * stride + 1``."""
        return MemoryCount(self.max_cond_frames, self._window() + 1)

    # -- internals ------------------------------------------------------------------------------------------------
    def _autocast(self):
        import torch

        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self._autocast_dtype)

    def _window(self) -> int:
        m = self.model
        return int(m.num_maskmem) * int(m.memory_temporal_stride_for_eval)

    def _num_frames(self, t: int) -> int:
        return max(int(self.video_frames), t + 1) if self.video_frames else 1 << 30

    def _encode(self, frame_bgr: np.ndarray) -> dict:
        """SAM 2's backbone output for one frame (Ultralytics' letterbox and normalisation, bit for bit)."""
        import torch

        from annotator import sam_ops
        from annotator.segment import letterbox_rgb

        x = torch.from_numpy(letterbox_rgb(frame_bgr)[None]).to(self.device)
        return self.model.forward_image(sam_ops.normalise(x, self._mean, self._std))

    def _features(self, backbone: dict, batch: int):
        _, feats, pos, sizes = self.model._prepare_backbone_features(backbone, batch=batch)
        return feats, pos, sizes

    def _sam_out(self, sam_outputs, prompted: bool) -> list[_Out]:
        _, _, ious, lowres, _, obj_ptr, obj_score = sam_outputs
        scores = ious.float().amax(dim=1).clamp(0, 1).tolist()
        return [
            _Out(lowres[i : i + 1], obj_ptr[i : i + 1], obj_score[i : i + 1], float(scores[i]), prompted)
            for i in range(lowres.shape[0])
        ]

    def _propagate(self, t: int, backbone: dict) -> dict[int, _Out]:
        """Every live track's output on step ``t`` from its memory, one batch per shared history."""
        cohorts: dict[tuple, list[int]] = {}
        for tid in self.book.live_ids():
            cohorts.setdefault(self._banks[tid].history(), []).append(tid)
        outs: dict[int, _Out] = {}
        for ids in cohorts.values():
            feats, pos, sizes = self._features(backbone, len(ids))
            sam_outputs, _, _ = self.model._track_step(
                t, False, feats, pos, sizes, None, None, self._memory_dict(ids), self._num_frames(t), False, None
            )
            outs.update(zip(ids, self._sam_out(sam_outputs, prompted=False)))
        return outs

    def _memory_dict(self, ids: list[int]) -> dict:
        """The batched ``output_dict`` SAM 2 reads memory from, for tracks that share one history."""
        import torch

        b = len(ids)
        pos = [p.expand(b, -1, -1, -1) for p in self._pos_enc] if b > 1 else self._pos_enc

        def frames(kind: str) -> dict:
            first = getattr(self._banks[ids[0]], kind)
            return {
                k: {
                    "maskmem_features": torch.cat([getattr(self._banks[i], kind)[k].maskmem for i in ids]),
                    "maskmem_pos_enc": pos,
                    "obj_ptr": torch.cat([getattr(self._banks[i], kind)[k].obj_ptr for i in ids]),
                }
                for k in first
            }

        return {"cond_frame_outputs": frames("cond"), "non_cond_frame_outputs": frames("non_cond")}

    def _prompt_box(self, t: int, backbone: dict, box_xyxy_px: np.ndarray, hw: tuple[int, int]) -> _Out:
        """One detection box decoded alone, without memory (Ultralytics' ``add_new_prompts`` on a new frame)."""
        import torch

        gain = input_gain(hw)
        pts = torch.as_tensor(np.asarray(box_xyxy_px, np.float32)[None], device=self.device) * gain
        labels = torch.tensor([[2, 3]], dtype=torch.int32, device=self.device)
        feats, pos, sizes = self._features(backbone, 1)
        sam_outputs, _, _ = self.model._track_step(
            t, True, feats, pos, sizes, {"point_coords": pts.view(-1, 2, 2), "point_labels": labels}, None, {},
            self._num_frames(t), False, None,
        )
        return self._sam_out(sam_outputs, prompted=True)[0]

    def _match(self, outs: dict[int, _Out], det_outs: list[_Out], detections: Detections, hw) -> KeyframePlan:
        """TrackBook's keyframe decision on the low-res masks (inside the letterboxed content)."""
        gain = input_gain(hw)
        rows, cols = (math.ceil(round(o * gain) * LOWRES_PX / SAM_INPUT_PX) for o in hw)

        def binary(o: _Out) -> np.ndarray:
            return (o.lowres[0, 0, :rows, :cols] > self._threshold).cpu().numpy()

        track_masks = {tid: binary(o) for tid, o in outs.items()}
        det_masks = np.stack([binary(o) for o in det_outs]) if det_outs else np.zeros((0, rows, cols), bool)
        return self.book.keyframe(track_masks, det_masks, detections)

    def _remember(self, t: int, backbone: dict, outs: dict[int, _Out]) -> None:
        """Encode this frame's masks into each track's memory, then prune to the bound."""
        import torch

        for prompted in (True, False):
            ids = [tid for tid in sorted(outs) if outs[tid].prompted == prompted]
            if not ids:
                continue
            lowres = torch.cat([outs[i].lowres for i in ids])
            if prompted:  # as Ultralytics consolidates a prompted frame: object present
                scores = torch.full((len(ids), 1), _PROMPTED_OBJ_SCORE, dtype=lowres.dtype, device=lowres.device)
            else:
                scores = torch.cat([outs[i].obj_score for i in ids])
            feats, _, sizes = self._features(backbone, len(ids))
            high = torch.nn.functional.interpolate(
                lowres, size=(SAM_INPUT_PX, SAM_INPUT_PX), mode="bilinear", align_corners=False
            )
            maskmem, pos = self.model._encode_new_memory(feats, sizes, high, scores, prompted)
            if self._pos_enc is None:
                self._pos_enc = [p[:1].clone() for p in pos]
            maskmem = maskmem.to(torch.float16)
            for k, tid in enumerate(ids):
                entry = _Entry(maskmem[k : k + 1].clone(), outs[tid].obj_ptr.clone())
                bank = self._banks[tid]
                (bank.cond if prompted else bank.non_cond)[t] = entry
        oldest = t - self._window()
        for bank in self._banks.values():
            for k in [k for k in bank.non_cond if k < oldest]:
                del bank.non_cond[k]
            for k in sorted(bank.cond)[: -self.max_cond_frames]:
                del bank.cond[k]

    def _finish(self, frame_index: int, outs: dict[int, _Out], hw: tuple[int, int]) -> list[TrackedObject]:
        """Upsample to the frame as Ultralytics' predictor (``scale_masks``, non-overlap, threshold) and record."""
        import torch
        from ultralytics.utils import ops

        ids = sorted(outs)
        if not ids:
            return []
        lowres = torch.cat([outs[i].lowres for i in ids]).flatten(0, 1).float()  # (N, 256, 256)
        full = ops.scale_masks(lowres[None], hw, (lowres_gain(hw), (0, 0)), padding=False)[0]
        if self.non_overlap:
            full = self.model._apply_non_overlapping_constraints(full[:, None])[:, 0]
        masks = (full > self._threshold).cpu().numpy()
        result = []
        for tid, m in zip(ids, masks):
            crop = MaskCrop.from_full(m)
            if crop.area_px == 0:
                continue
            self.book.observe(tid, int(frame_index), outs[tid].iou)
            result.append(
                TrackedObject(tid, self.book.class_id(tid), self.book.det_conf(tid), outs[tid].iou, crop)
            )
        return result
