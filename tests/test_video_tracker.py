"""The SAM 2 video tracker: equivalence with Ultralytics' SAM2VideoPredictor, identities, bounded memory.

* Identity logic (matching, new ids, votes, lost tracks) is tested on :class:`TrackBook` fed the exact masks of
  synthetic moving and occluding shapes: random SAM weights give noise masks, which can not show it.
* Equivalence runs the real tracker and Ultralytics on the same random SAM 2-tiny, video and frame-0 boxes.
* The memory bound and the tracker's own bookkeeping run the real tracker with SAM 2's two costly CPU parts
  (image encoder, memory attention) stubbed, so many steps fit in seconds; what is stored is unchanged.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from annotator.records import Detections
from annotator.synthetic import mask_box_xyxy_px
from annotator.video.matching import greedy_match, mask_iou_matrix
from annotator.video.track_book import TrackBook

HW = (128, 160)


# -- synthetic moving shapes with exact visible masks ------------------------------------------------------------
def _disc(hw, cx, cy, r):
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def scene(n_frames: int, objects: list[dict], hw=HW) -> list[dict[str, np.ndarray]]:
    """Per frame ``{name: visible (H, W) bool}`` of discs moving linearly, painted in list order (later covers
    earlier). Each object: ``name, x0, y0, vx, vy, r`` and optional ``start`` (first frame it exists)."""
    frames = []
    for f in range(n_frames):
        painted: dict[str, np.ndarray] = {}
        for o in objects:
            if f < o.get("start", 0):
                continue
            m = _disc(hw, o["x0"] + o["vx"] * f, o["y0"] + o["vy"] * f, o["r"])
            for k in painted:
                painted[k] &= ~m
            painted[o["name"]] = m
        frames.append(painted)
    return frames


def detect(visible: dict[str, np.ndarray], classes: dict[str, int], skip=(), min_area=20):
    """A perfect detector: the visible objects (minus ``skip``), their boxes, classes and masks."""
    names = [n for n, m in visible.items() if m.sum() >= min_area and n not in skip]
    det = Detections(
        np.array([mask_box_xyxy_px(visible[n]) for n in names], np.float32).reshape(-1, 4),
        np.array([classes[n] for n in names], np.int64),
        np.full(len(names), 0.9, np.float32),
    )
    masks = np.stack([visible[n] for n in names]) if names else np.zeros((0, *HW), bool)
    return names, det, masks


class OracleTracker:
    """Drives a TrackBook as the SAM tracker does, with each track's mask the exact mask of the object it
    started on (a perfect propagator)."""

    def __init__(self, **kw):
        self.book = TrackBook(**kw)
        self.follows: dict[int, str] = {}

    def keyframe(self, visible, classes, skip=(), class_override=None):
        names, det, masks = detect(visible, classes, skip)
        if class_override:
            det = Detections(det.xyxy_px, np.array([class_override.get(n, classes[n]) for n in names]), det.det_conf)
        empty = np.zeros(HW, bool)
        track_masks = {t: visible.get(self.follows[t], empty) for t in self.book.live_ids()}
        plan = self.book.keyframe(track_masks, masks, det)
        for tid, d in plan.new:
            self.follows[tid] = names[d]
        return plan, names

    def observe(self, frame, visible):
        for t in self.book.live_ids():
            if visible.get(self.follows[t], np.zeros(HW, bool)).any():
                self.book.observe(t, frame, 0.5)


# -- matching ------------------------------------------------------------------------------------------------------
def test_mask_iou_and_greedy_match():
    a = np.zeros((3, 8, 8), bool)
    a[0, :4, :4] = True
    a[1, 4:, 4:] = True  # a[2] empty
    b = np.stack([a[1], a[0], a[0] | a[1]])
    iou = mask_iou_matrix(a, b)
    assert iou.shape == (3, 3) and iou[0, 1] == 1.0 and iou[1, 0] == 1.0 and iou[0, 2] == 0.5
    assert (iou[2] == 0).all()  # an empty mask matches nothing
    assert greedy_match(iou, 0.5) == [(0, 1), (1, 0)]  # each row and column once, best first
    assert greedy_match(iou, 1.01) == []
    assert greedy_match(np.array([[0.6, 0.6]]), 0.5) == [(0, 0)]  # ties: the lower column
    with pytest.raises(ValueError, match="one size"):
        mask_iou_matrix(a, np.zeros((1, 4, 4), bool))


# -- identities on exact masks -------------------------------------------------------------------------------------
def test_ids_new_objects_lost_and_never_reused():
    """A walks right all along; B appears on frame 4; C is covered by D (painted later) from frame ~6 to ~13,
    then comes back out: C is lost after 2 missed keyframes and returns with a new id."""
    objs = [
        dict(name="A", x0=20, y0=20, vx=3, vy=0, r=10),
        dict(name="C", x0=100, y0=90, vx=0, vy=0, r=6),
        dict(name="D", x0=60, y0=90, vx=4, vy=0, r=18),  # covers C (x 100) wholly on frames 7..13
        dict(name="B", x0=30, y0=80, vx=0, vy=-1, r=9, start=4),
    ]
    classes = {"A": 0, "B": 1, "C": 2, "D": 0}
    frames = scene(24, objs)
    assert not frames[10]["C"].any() and frames[0]["C"].any() and frames[22]["C"].any()
    tr = OracleTracker(match_iou=0.5, max_missing=2)
    ids_seen: list[int] = []
    for f, vis in enumerate(frames):
        if f % 2 == 0:  # keyframes every 2 frames
            plan, _ = tr.keyframe(vis, classes)
            ids_seen += [t for t, _ in plan.new]
        tr.observe(f, vis)
    assert ids_seen == sorted(set(ids_seen))  # ids only grow, never given twice
    by_obj: dict[str, list[int]] = {}
    for tid, name in tr.follows.items():
        by_obj.setdefault(name, []).append(tid)
    assert by_obj["A"] == [1] and by_obj["D"] == [3] and by_obj["B"] == [4]  # matched tracks keep their id
    assert len(by_obj["C"]) == 2 and by_obj["C"][0] == 2  # C lost, back with a new id
    s = {x.track_id: x for x in tr.book.summaries()}
    old_c, new_c = by_obj["C"]
    assert s[old_c].ended == "lost" and s[new_c].ended == "video_end" and s[1].ended == "video_end"
    assert s[4].first_frame == 4 and s[1].first_frame == 0 and s[1].last_frame == 23 and s[1].frames == 24
    assert s[new_c].first_frame > s[old_c].last_frame
    assert s[4].class_id == 1 and s[4].class_votes == {1: 10}


def test_detector_miss_keeps_a_visible_track():
    frames = scene(9, [dict(name="A", x0=30, y0=40, vx=2, vy=1, r=12)])
    tr = OracleTracker(match_iou=0.5, max_missing=1)
    for f, vis in enumerate(frames):
        tr.keyframe(vis, {"A": 0}, skip=("A",) if f in (2, 3, 4) else ())  # not detected, but still tracked
    assert tr.book.live_ids() == [1] and list(tr.follows) == [1]


def test_max_unconfirmed_ends_a_visible_track_no_detection_matches():
    """With ``max_unconfirmed=3``, A (missed on keyframes 2-3 only) lives on; B (never detected after its start:
    a false start or drift) ends ``unconfirmed`` on its third unconfirmed keyframe and its id is not reused."""
    frames = scene(8, [dict(name="A", x0=30, y0=40, vx=2, vy=1, r=12), dict(name="B", x0=110, y0=30, vx=0, vy=2, r=8)])
    tr = OracleTracker(match_iou=0.5, max_missing=2, max_unconfirmed=3)
    ended_at = {}
    for f, vis in enumerate(frames):
        skip = ("A", "B") if f in (2, 3) else ("B",) if f > 0 else ()
        plan, _ = tr.keyframe(vis, {"A": 0, "B": 1}, skip=skip)
        ended_at.update({t: f for t in plan.lost})
    assert ended_at == {2: 3} and tr.book.live_ids() == [1]  # B: unconfirmed on frames 1, 2, 3
    s = {x.track_id: x for x in tr.book.summaries()}
    assert s[2].ended == "unconfirmed" and s[1].ended == "video_end"
    with pytest.raises(ValueError, match="max_unconfirmed"):
        TrackBook(max_unconfirmed=0)


def test_class_vote_ties_go_to_the_earliest():
    frames = scene(6, [dict(name="A", x0=40, y0=40, vx=1, vy=0, r=12)])
    tr = OracleTracker(match_iou=0.5, max_missing=3)
    for f, vis in enumerate(frames[:4]):
        tr.keyframe(vis, {"A": 0}, class_override={"A": 2 if f in (0, 2) else 1})
    assert tr.book.summaries()[0].class_votes == {2: 2, 1: 2}
    assert tr.book.class_id(1) == 2  # 2 was voted first
    tr.keyframe(frames[4], {"A": 0}, class_override={"A": 1})
    assert tr.book.class_id(1) == 1 and tr.book.det_conf(1) == pytest.approx(0.9)


def test_low_iou_starts_a_new_track_and_bad_arguments():
    book = TrackBook(match_iou=0.9, max_missing=2)
    m = np.zeros((1, *HW), bool)
    m[0, 10:30, 10:30] = True
    det = Detections(np.array([[10, 10, 30, 30]], np.float32), np.array([0]), np.array([0.8], np.float32))
    assert book.keyframe({}, m, det).new == ((1, 0),)
    shifted = np.roll(m, 4, axis=2)  # IoU 0.67 < 0.9: another object for this book
    plan = book.keyframe({1: m[0]}, shifted, det)
    assert plan.matched == () and plan.new == ((2, 0),)
    with pytest.raises(ValueError, match="live tracks"):
        book.keyframe({}, m, det)
    with pytest.raises(ValueError, match="max_missing"):
        TrackBook(max_missing=0)


# -- the SAM 2 tracker -----------------------------------------------------------------------------------------------
def _video_frames(n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` frames of two discs moving over a noisy background and their frame-0 boxes ``(2, 4)``."""
    rng = np.random.default_rng(1)
    bg = cv2.GaussianBlur(rng.integers(0, 255, (*HW, 3), dtype=np.uint8), (7, 7), 0)
    objs = [dict(name="a", x0=40, y0=50, vx=3, vy=1, r=18), dict(name="b", x0=110, y0=80, vx=-2, vy=0, r=14)]
    out = []
    for vis in scene(n, objs):
        img = bg.copy()
        img[vis["a"]] = (40, 200, 40)
        img[vis["b"]] = (30, 30, 220)
        out.append(img)
    f0 = scene(1, objs)[0]
    return out, np.array([mask_box_xyxy_px(f0["a"]), mask_box_xyxy_px(f0["b"])], np.float32)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """The frames as an MJPG .avi (Ultralytics' video source) and the same frames decoded back by OpenCV."""
    frames, boxes = _video_frames(3)
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (HW[1], HW[0]))
    for f in frames:
        vw.write(f)
    vw.release()
    cap = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        decoded.append(f)
    cap.release()
    assert len(decoded) == len(frames)
    return path, decoded, boxes


@pytest.fixture()
def shared_encoder(monkeypatch):
    """``SAM2Model.forward_image`` memoised on the exact input tensor, shared by every model in the test.

    Ultralytics encodes frame 0 three times (once per prompt, once to consolidate) and we encode each frame
    once: with the memo the CPU encodes each distinct input once. A different input (a preprocessing
    difference) misses the memo and is encoded on its own, so equal outputs still prove equal preprocessing."""
    import hashlib

    from ultralytics.models.sam.modules.sam import SAM2Model

    cache: dict = {}
    original = SAM2Model.forward_image

    def forward_image(self, img_batch):
        x = img_batch.detach().cpu().contiguous()
        key = (tuple(x.shape), str(x.dtype), hashlib.sha1(x.numpy().tobytes()).hexdigest())
        if key not in cache:
            cache[key] = original(self, img_batch)
        out = cache[key]
        return {**out, "backbone_fpn": list(out["backbone_fpn"]), "vision_pos_enc": list(out["vision_pos_enc"])}

    monkeypatch.setattr(SAM2Model, "forward_image", forward_image)
    return cache


@pytest.mark.slow
def test_equivalent_to_ultralytics_video_predictor(video, sam2_t_ckpt, shared_encoder, monkeypatch):
    """Same checkpoint, same video, same frame-0 boxes: the same low-res logits and masks on every frame, bit
    for bit.

    Frame 0 is the prompted (conditioning) frame, frame 1 reads it from memory, frame 2 reads it and frame 1's
    non-conditioning memory and object pointers; both objects run as one batch, as in Ultralytics."""
    import torch
    from ultralytics.models.sam import SAM2VideoPredictor

    from annotator.video.sam2_tracker import SAM2Tracker

    path, frames, boxes = video
    ref_logits: list = []
    infer = SAM2VideoPredictor.inference

    def recording(self, im, *args, **kwargs):
        out = infer(self, im, *args, **kwargs)
        ref_logits.append(out[0].clone())
        return out

    monkeypatch.setattr(SAM2VideoPredictor, "inference", recording)
    pred = SAM2VideoPredictor(
        overrides=dict(model=str(sam2_t_ckpt), imgsz=1024, device="cpu", save=False, verbose=False, conf=0.25)
    )
    ref = []
    for r in pred(source=str(path), bboxes=boxes.tolist(), stream=True):
        cls = r.boxes.cls.int().tolist() if r.masks is not None else []
        data = r.masks.data.bool().numpy() if r.masks is not None else np.zeros((0, *HW), bool)
        ref.append({c + 1: m for c, m in zip(cls, data)})  # object index i -> our track i + 1
    assert len(ref) == len(ref_logits) == len(frames)

    tracker = SAM2Tracker(sam2_t_ckpt, "sam2_t.pt", device="cpu", video_frames=len(frames))
    our_logits: list = []
    finish = tracker._finish

    def finishing(frame_index, outs, hw):
        our_logits.append(torch.cat([outs[t].lowres for t in sorted(outs)]).flatten(0, 1).clone())
        return finish(frame_index, outs, hw)

    monkeypatch.setattr(tracker, "_finish", finishing)
    det = Detections(boxes, np.array([0, 1]), np.array([0.9, 0.8], np.float32))
    for k, frame in enumerate(frames):
        objs = tracker.step(frame, k, det if k == 0 else None)
        assert our_logits[k].shape == ref_logits[k].shape == (2, 256, 256)
        assert torch.equal(our_logits[k], ref_logits[k]), f"frame {k}: logits differ"
        ours = {o.track_id: o.mask.to_full() for o in objs}
        assert sorted(ours) == sorted(ref[k]), f"frame {k}: tracks {sorted(ours)} vs {sorted(ref[k])}"
        for tid in ours:
            assert np.array_equal(ours[tid], ref[k][tid]), f"frame {k} track {tid}: masks differ"
    assert sorted(ref[0]) == [1, 2]
    assert len(shared_encoder) == len(frames)  # one encoding per frame: both saw the same inputs


@pytest.fixture(scope="module")
def frame_encoding(sam2_t_ckpt):
    """One frame's SAM 2 backbone output, encoded once for the tests that stub the encoder."""
    import torch

    from annotator import sam_ops
    from annotator.models import load_sam
    from annotator.segment import letterbox_rgb

    model = load_sam(sam2_t_ckpt, "sam2_t.pt").float().eval()
    with torch.inference_mode():
        x = torch.from_numpy(letterbox_rgb(np.full((*HW, 3), 90, np.uint8))[None])
        return model.forward_image(sam_ops.normalise(x, *sam_ops.mean_std("cpu")))


@pytest.fixture()
def fast_tracker(sam2_t_ckpt, frame_encoding, monkeypatch):
    """A real SAM2Tracker whose image encoder returns one cached frame encoding and whose memory attention
    passes the frame's features through (the two parts that cost seconds on a CPU). Everything the tracker
    stores, prunes and decides runs as is; the memory is still assembled and handed to the model."""
    import torch

    from annotator.video.sam2_tracker import SAM2Tracker

    tr = SAM2Tracker(sam2_t_ckpt, "sam2_t.pt", device="cpu", max_missing=2, max_cond_frames=2)
    cached = frame_encoding
    seen: list[int] = []

    class PassThrough(torch.nn.Module):
        def forward(self, curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens=0):
            seen.append(memory.shape[0])  # memory tokens handed to attention
            return curr[0]

    monkeypatch.setattr(tr, "_encode", lambda frame: dict(cached))
    monkeypatch.setattr(tr.model, "memory_attention", PassThrough())
    tr.memory_tokens_seen = seen
    return tr


@pytest.mark.slow
def test_memory_stays_bounded(fast_tracker, monkeypatch):
    """Keyframes at steps 0, 3, 6, 9 refresh both tracks (matching forced: random masks would not match), then
    10 plain steps: each track keeps its 2 latest prompted frames and Ultralytics' window of propagated ones."""
    from annotator.video.track_book import KeyframePlan

    tr = fast_tracker
    decide = tr.book.keyframe

    def refresh_all(track_masks, det_masks, detections, present=None):
        live = tr.book.live_ids()
        if not live:
            return decide(track_masks, det_masks, detections, present)
        return KeyframePlan(matched=tuple(zip(live, range(len(detections)))))

    monkeypatch.setattr(tr.book, "keyframe", refresh_all)
    det = Detections(np.array([[10, 10, 60, 60], [80, 30, 150, 110]], np.float32), np.array([0, 1]),
                     np.array([0.9, 0.7], np.float32))
    bound = tr.memory_bound
    assert bound.cond == 2 and bound.non_cond == tr.model.num_maskmem + 1
    most = {"cond": 0, "non_cond": 0}
    nbytes = []
    for k in range(20):
        tr.step(np.zeros((*HW, 3), np.uint8), k, det if k in (0, 3, 6, 9) else None)
        nbytes.append(tr.memory_nbytes())
        counts = tr.memory_entries()
        assert list(counts) == [1, 2]
        for c in counts.values():
            assert c.cond <= bound.cond and c.non_cond <= bound.non_cond
            most["cond"] = max(most["cond"], c.cond)
            most["non_cond"] = max(most["non_cond"], c.non_cond)
    assert most == {"cond": bound.cond, "non_cond": bound.non_cond}  # the bound is reached, not exceeded
    assert sorted(tr._banks[1].cond) == [6, 9]  # the latest prompted steps
    assert len(set(nbytes[17:])) == 1 and nbytes[-1] > nbytes[0] > 0  # flat once the window is full (step 17)
    # memory attention never reads more than max_cond + (num_maskmem - 1) frames of 64 x 64 tokens (+ pointers)
    assert max(tr.memory_tokens_seen) // (64 * 64) <= bound.cond + tr.model.num_maskmem - 1


@pytest.mark.slow
def test_tracker_bookkeeping_with_random_weights(fast_tracker):
    """Whatever random masks do: ids only grow, outputs are by id, every id is summarised once, frames only
    forward, a new video starts from id 1."""
    tr = fast_tracker
    boxes = [[10, 10, 60, 60], [80, 30, 150, 110], [20, 70, 70, 120]]
    given: list[int] = []
    for k in range(10):
        det = None
        if k % 3 == 0:
            n = 1 + (k // 3) % 3  # 1, 2, 3, 1 detections
            det = Detections(np.array(boxes[:n], np.float32), np.arange(n), np.full(n, 0.8, np.float32))
        before = set(t.track_id for t in tr.tracks())
        objs = tr.step(np.zeros((*HW, 3), np.uint8), 10 + 2 * k, det)
        ids = [o.track_id for o in objs]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        for o in objs:
            assert o.mask.image_hw == HW and o.mask.area_px > 0 and 0 <= o.sam_score <= 1
        new = sorted(set(t.track_id for t in tr.tracks()) - before)
        assert all(t > max(before, default=0) for t in new)
        given += new
    summaries = tr.tracks()
    assert [s.track_id for s in summaries] == list(range(1, len(summaries) + 1)) == sorted(given)
    assert {s.ended for s in summaries} <= {"lost", "video_end"}
    assert all(s.frames == 0 or 10 <= s.first_frame <= s.last_frame <= 28 for s in summaries)
    assert set(tr.memory_entries()) == set(tr.book.live_ids())  # lost tracks freed their memory
    with pytest.raises(ValueError, match="frames must increase"):
        tr.step(np.zeros((*HW, 3), np.uint8), 5, None)
    with pytest.raises(ValueError, match="uint8 BGR"):
        tr.step(np.zeros(HW, np.uint8), 99, None)
    tr.reset()
    assert tr.tracks() == [] and tr.memory_entries() == {}
    det = Detections(np.array(boxes[:1], np.float32), np.array([0]), np.array([0.8], np.float32))
    tr.step(np.zeros((*HW, 3), np.uint8), 0, det)
    assert [s.track_id for s in tr.tracks()] == [1]


def test_refuses_a_sam1_model(mobile_sam_ckpt):
    from annotator.video.sam2_tracker import SAM2Tracker

    with pytest.raises(ValueError, match="needs a SAM 2 model"):
        SAM2Tracker(mobile_sam_ckpt, "mobile_sam.pt", device="cpu")
