"""Agreement of a finished run with a hand-labelled subset: COCO mask and box AP/AR (pycocotools' COCOeval).

The ground truth is a COCO file (polygons or RLE) or a YOLO labels tree (``.txt`` files, polygon or box rows,
normalised, as Ultralytics writes them) for *some* of the images. Images are matched by file name: the
COCO ``file_name`` (or the label file's path with the image's suffix) equal to the run's ``rel_path``, else
equal base names when unique on both sides. Only matched images are evaluated; classes are matched by name.

Predictions are the run's instances with ``score = det_conf x sam_score`` (the COCO ranking key). Besides AP,
each matched image gets an F1 at mask IoU 0.5 (same class, greedy by score): the images that disagree most
are listed first; they are the review queue's top.

Example:
    >>> report = evaluate(open_finished("runs/street"), Path("hand_labelled.json"))  # doctest: +SKIP
    >>> report.segm["AP"], report.bbox["AP50"], report.disagreements[0]["rel_path"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from annotator.errors import ConfigError, InputFileError
from annotator.finished import FinishedImage, FinishedRun
from annotator.formats.coco import segmentation_area_bbox

#: names of COCOeval's 12 summary numbers, in its order
STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small",
              "AR_medium", "AR_large")  # fmt: skip


@dataclass
class EvalReport:
    """What :func:`evaluate` found. ``segm`` / ``bbox``: :data:`STAT_NAMES` -> value (``-1``: no such object);
    ``per_class``: name -> ``{"gt", "pred", "segm_AP", "bbox_AP"}``; ``disagreements``: matched images,
    worst first: ``{"rel_path", "f1", "matched", "gt", "pred"}``."""

    gt_path: str
    images_matched: int
    gt_images_unmatched: list[str]
    segm: dict[str, float]
    bbox: dict[str, float]
    per_class: dict[str, dict] = field(default_factory=dict)
    disagreements: list[dict] = field(default_factory=list)
    unknown_gt_classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self, worst: int = 10) -> str:
        lines = [
            f"ground truth {self.gt_path}: {self.images_matched} images matched"
            + (f", {len(self.gt_images_unmatched)} not in the run" if self.gt_images_unmatched else ""),
            f"{'':10s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s} {'AR100':>6s}",
        ]
        for kind, s in (("mask", self.segm), ("box", self.bbox)):
            lines.append(f"{kind:10s} " + " ".join(f"{s[k]:6.3f}" for k in ("AP", "AP50", "AP75", "AR100")))
        lines.append(f"{'class':16s} {'gt':>5s} {'pred':>5s} {'mask AP':>8s} {'box AP':>8s}")
        for name, c in self.per_class.items():
            lines.append(f"{name:16s} {c['gt']:5d} {c['pred']:5d} {c['segm_AP']:8.3f} {c['bbox_AP']:8.3f}")
        if self.disagreements:
            lines.append("images that disagree most (F1 at mask IoU 0.5; review these first):")
            for d in self.disagreements[:worst]:
                lines.append(f"  {d['f1']:.3f}  {d['rel_path']}  (matched {d['matched']} of {d['gt']} gt, {d['pred']} predicted)")
        return "\n".join(lines)


def evaluate(run: FinishedRun, gt_path: str | Path) -> EvalReport:
    """COCO AP/AR of ``run`` against the ground truth at ``gt_path`` (COCO ``.json`` or a YOLO labels folder)."""
    return evaluate_images({img.rel_path: img for img in run.images()}, run.names, gt_path, where=str(run.output_dir))


def evaluate_images(ours: dict[str, FinishedImage], names: dict[int, str], gt_path: str | Path, *, where: str = "the run") -> EvalReport:
    """:func:`evaluate` on images given as ``rel_path -> FinishedImage`` (instances with scores)."""
    from pycocotools.coco import COCO

    gt_path = Path(gt_path).expanduser().absolute()
    gt_doc, unmatched, unknown = _ground_truth(gt_path, ours, names)
    if not gt_doc["images"]:
        raise InputFileError(gt_path, "images", f"at least one image named as an image of {where}", "none")
    preds = _predictions(gt_doc["images"], ours)
    gt = COCO()
    gt.dataset = gt_doc
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    stats = {kind: _cocoeval(gt, preds, kind) for kind in ("segm", "bbox")}
    per_class = {}
    for cat in gt_doc["categories"]:
        k = cat["id"]
        per_class[cat["name"]] = {
            "gt": sum(a["category_id"] == k for a in gt_doc["annotations"]),
            "pred": sum(p["category_id"] == k for p in preds),
            "segm_AP": stats["segm"][1].get(k, -1.0),
            "bbox_AP": stats["bbox"][1].get(k, -1.0),
        }
    return EvalReport(
        gt_path=str(gt_path),
        images_matched=len(gt_doc["images"]),
        gt_images_unmatched=unmatched,
        segm=stats["segm"][0],
        bbox=stats["bbox"][0],
        per_class=per_class,
        disagreements=_disagreements(gt_doc, preds),
        unknown_gt_classes=sorted(unknown),
    )


# ------------------------------------------------------------------------------------------ ground truth


def _ground_truth(gt_path: Path, ours: dict, names: dict[int, str]) -> tuple[dict, list[str], set[str]]:
    """A COCO dict over the matched images, with *our* image ids (1..n) and category ids (class + 1)."""
    if gt_path.is_file() and gt_path.suffix.lower() == ".json":
        entries, unknown = _coco_entries(gt_path, names)
    elif gt_path.is_dir():
        entries, unknown = _yolo_entries(gt_path, ours, names), set()
    elif _special(gt_path):  # a named pipe, socket or device: refused unopened
        raise InputFileError(gt_path, "", "a COCO .json file or a folder of YOLO label .txt files", _special(gt_path))
    else:
        raise ConfigError(f"--gt {gt_path}: pass a COCO .json file or a folder of YOLO label .txt files")
    match = _match_names([e[0] for e in entries], list(ours))
    images, anns, unmatched = [], [], []
    for file_name, segs in entries:
        rel = match.get(file_name)
        if rel is None:
            unmatched.append(file_name)
            continue
        image_id = len(images) + 1
        h, w = ours[rel].image_hw
        images.append({"id": image_id, "file_name": rel, "height": h, "width": w})
        for cat_id, seg in segs(h, w):
            area, bbox = segmentation_area_bbox(seg, (h, w))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_id, "segmentation": seg,
                         "area": float(area), "bbox": bbox, "iscrowd": 0})  # fmt: skip
    cats = [{"id": k + 1, "name": v} for k, v in names.items()]
    return {"images": images, "annotations": anns, "categories": cats}, sorted(unmatched), unknown


def _special(path: Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder (``"a named pipe"``...)."""
    import os

    from annotator.validation.files import special_kind

    try:
        kind = special_kind(os.stat(path).st_mode)
    except OSError:
        return None
    return None if kind == "a folder" else kind


def _coco_entries(path: Path, names: dict[int, str]):
    """``[(file_name, segs(h, w))]`` and the GT category names the run does not know, from a validated COCO
    file (:func:`annotator.validation.coco.load_ground_truth`); an RLE whose size is not the run's image size
    is an InputFileError."""
    from annotator.validation.coco import load_ground_truth

    gt = load_ground_truth(path)
    by_name = {v: k + 1 for k, v in names.items()}
    cat_map = {cid: by_name.get(name) for cid, name in gt.categories.items()}
    unknown = {name for name in gt.categories.values() if name not in by_name}
    by_image: dict[int, list] = {}
    for a in gt.annotations:
        if cat_map.get(a.category_id) is not None and not a.iscrowd:
            by_image.setdefault(a.image_id, []).append(a)

    def segs_of(anns: list):
        def segs(h: int, w: int) -> list:
            for a in anns:
                if isinstance(a.segmentation, dict) and list(a.segmentation["size"]) != [h, w]:
                    raise InputFileError(path, f"annotations[{a.index}].segmentation.size",
                                         f"the image's size [{h}, {w}]", a.segmentation["size"])  # fmt: skip
            return [(cat_map[a.category_id], a.segmentation) for a in anns]

        return segs

    return [(im.file_name, segs_of(by_image.get(im.id, []))) for im in gt.images], unknown


def _yolo_entries(folder: Path, ours: dict, names: dict[int, str]):
    """Every label file under ``folder`` (``classes.txt`` at the top is not one; special files refused
    unopened), rows validated; rows of a class
    the run does not know are left out."""
    from annotator.validation.yolo import label_files, load_yolo_file

    suffix_of = {str(Path(rel).with_suffix("")): Path(rel).suffix for rel in ours}
    entries = []
    for txt in label_files(folder):
        stem_rel = txt.relative_to(folder).with_suffix("").as_posix()
        rows = load_yolo_file(txt, set(names), skip_unknown=True)
        entries.append((stem_rel + suffix_of.get(stem_rel, ".jpg"), _yolo_rows(rows)))
    return entries


def _yolo_rows(rows: list):
    def segs(h: int, w: int) -> list:
        out = []
        for r in rows:
            if r.box_cxcywh_norm is not None:  # a box row: its rectangle (box-only ground truth: read the box AP)
                cx, cy, bw, bh = np.asarray(r.box_cxcywh_norm) * (w, h, w, h)
                xy = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, cx - bw / 2, cy + bh / 2]
            else:
                xy = (r.polygon_xy_norm * (w, h)).ravel().tolist()
            out.append((r.class_id + 1, [[float(v) for v in xy]]))
        return out

    return segs


def _match_names(gt_names: list[str], rels: list[str]) -> dict[str, str]:
    """GT file name -> our rel_path: the same path, else the same base name when unique on both sides."""
    ours = set(rels)
    by_base: dict[str, list[str]] = {}
    for rel in rels:
        by_base.setdefault(Path(rel).name, []).append(rel)
    gt_base_count: dict[str, int] = {}
    for n in gt_names:
        gt_base_count[Path(n).name] = gt_base_count.get(Path(n).name, 0) + 1
    out = {}
    for n in gt_names:
        norm = Path(n).as_posix().lstrip("./")
        if norm in ours:
            out[n] = norm
        elif len(by_base.get(Path(n).name, [])) == 1 and gt_base_count[Path(n).name] == 1:
            out[n] = by_base[Path(n).name][0]
    return out


def _to_rle(seg, h: int, w: int):
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, h, w)
    return {"size": seg["size"], "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]}


# ------------------------------------------------------------------------------------------ predictions


def _predictions(images: list[dict], ours: dict) -> list[dict]:
    from annotator.formats.coco import instances_to_coco_annotations

    preds = []
    for im in images:
        mine = ours[im["file_name"]]
        for a in instances_to_coco_annotations(
            mine.instances, image_id=im["id"], first_annotation_id=len(preds) + 1, image_hw=mine.image_hw
        ):
            a["score"] = a["score"] * a.pop("sam_score")
            preds.append(a)
    return preds


def _cocoeval(gt, preds: list[dict], kind: str) -> tuple[dict[str, float], dict[int, float]]:
    from pycocotools.cocoeval import COCOeval

    if not preds:
        return {k: 0.0 for k in STAT_NAMES}, {}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(p) for p in preds])
        ev = COCOeval(gt, dt, kind)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_class = {}
    for k_idx, cat_id in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k_idx, 0, -1]  # IoU thresholds x recall, area all, maxDets 100
        per_class[cat_id] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}, per_class


def _disagreements(gt_doc: dict, preds: list[dict]) -> list[dict]:
    """Per matched image: F1 of a greedy same-class matching at mask IoU >= 0.5; worst first."""
    from pycocotools import mask as mask_utils

    by_img_gt: dict[int, list] = {}
    by_img_dt: dict[int, list] = {}
    for a in gt_doc["annotations"]:
        by_img_gt.setdefault(a["image_id"], []).append(a)
    for p in sorted(preds, key=lambda p: -p["score"]):
        by_img_dt.setdefault(p["image_id"], []).append(p)
    rows = []
    for im in gt_doc["images"]:
        h, w = im["height"], im["width"]
        g, d = by_img_gt.get(im["id"], []), by_img_dt.get(im["id"], [])
        used: set[int] = set()
        matched = 0
        if g and d:
            g_rle = [_to_rle(a["segmentation"], h, w) for a in g]
            for p in d:
                ious = mask_utils.iou([_to_rle(p["segmentation"], h, w)], g_rle, [0] * len(g))[0]
                best = max(
                    (j for j in range(len(g)) if j not in used and g[j]["category_id"] == p["category_id"]),
                    key=lambda j: ious[j], default=None,
                )  # fmt: skip
                if best is not None and ious[best] >= 0.5:
                    used.add(best)
                    matched += 1
        f1 = 1.0 if not g and not d else 2 * matched / (len(g) + len(d))
        rows.append({"rel_path": im["file_name"], "f1": round(f1, 4), "matched": matched, "gt": len(g), "pred": len(d)})
    return sorted(rows, key=lambda r: (r["f1"], r["rel_path"]))
