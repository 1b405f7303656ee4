"""Validated settings for one annotation run.

Every option of :func:`annotator.auto_annotate`, of ``annotator annotate`` and of a ``configs/*.yaml`` file is
a field of :class:`AnnotateConfig`. Unknown keys are refused (``extra="forbid"``), so a typo fails loudly, and
every error is reported as one line naming the field, the value and what is allowed.

Example:
    >>> cfg = AnnotateConfig(data="sample_data/shapes/images", conf=0.3)  # doctest: +SKIP
    >>> cfg.output_dir.name  # doctest: +SKIP
    'labels'
"""

from __future__ import annotations

import ast
import difflib
import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from annotator.engine_settings import RaySettings
from annotator.everything import EverythingSettings
from annotator.errors import ConfigError
from annotator.path_guard import UnsafePathError, absolute_path, check_annotate_paths
from annotator.splits import SplitSettings

Format = Literal["yolo", "coco", "both"]

#: Environment variable naming a folder searched for weight files (after an explicit path).
WEIGHTS_DIR_ENV = "ANNOTATOR_WEIGHTS_DIR"


class AnnotateConfig(BaseModel):
    """All settings of a run. Field names are the API keyword names, the YAML keys and the CLI flags.

    Paths are made absolute. ``output_dir`` is filled with the default when not given:
    the sibling ``labels/`` folder when ``data`` is a folder named ``images`` (so the tree trains as is),
    else ``<data>_auto_annotate_labels`` beside ``data`` (as Ultralytics does).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # -- the leading parameters of ultralytics.data.annotator.auto_annotate, same meaning --------------
    data: Path = Field(description="folder of images (searched recursively), one image, or a .txt list")
    det_model: str = Field("yolo11x.pt", description="Ultralytics YOLO detector: name or path (str or Path)")
    sam_model: str = Field("sam2_b.pt", description="SAM / SAM 2 / MobileSAM weights: name or path (str or Path)")
    device: str = Field(
        "", description="'' (auto), 'cpu', 'cuda', '0', 'cuda:1', 'mps'; also an int (0) or a torch.device, as in Ultralytics"
    )
    conf: float = Field(0.25, ge=0.0, le=1.0, description="detector confidence threshold")
    iou: float = Field(0.45, ge=0.0, le=1.0, description="detector NMS IoU threshold")
    imgsz: int | tuple[int, int] = Field(
        640,
        description="detector input size in pixels: N or [height, width] (as Ultralytics: a size that is not a multiple "
        "of the stride 32 is rounded up, with a warning)",
    )
    max_det: int = Field(300, ge=1, description="maximum detections per image")
    classes: list[int] | None = Field(None, description="keep only these detector class ids")
    output_dir: Path | None = Field(None, description="where labels/ and the COCO JSON go")

    # -- prompt source ----------------------------------------------------------------------------------
    prompts: Literal["detector", "boxes", "points", "everything"] = Field(
        "detector",
        description="where SAM's prompts come from: the detector, existing box labels (polygon rows are kept), "
        "a file of points per object (prompt_points), or everything: a grid of points, no detector (settings in "
        "everything:)",
    )
    prompt_labels: Path | None = Field(
        None,
        description="prompts 'boxes': a YOLO labels folder mirroring data, or a COCO .json (default: the labels/ "
        "folder beside data when data is an images/ folder)",
    )
    prompt_points: Path | None = Field(
        None,
        description="prompts 'points': a JSON file of point prompts per image and object (format: "
        "annotator/prompt_points.py, README 'Prompt sources')",
    )
    detector_masks: Literal["ignore", "prompt", "keep_better"] = Field(
        "ignore",
        description="a -seg detector's masks: ignore them (boxes only), give each to SAM as a mask prompt with its "
        "box, or keep the detector's mask where SAM's score is below the detector's confidence",
    )
    everything: EverythingSettings = Field(
        default_factory=EverythingSettings, description="prompts everything: point grid, filters, class name"
    )

    # -- outputs --------------------------------------------------------------------------------------
    format: Format = Field("yolo", description="yolo (labels/*.txt + data.yaml), coco (one JSON) or both")
    coco_filename: str = Field("annotations.json", description="file name of the COCO JSON in output_dir")
    coco_segmentation: Literal["polygon", "rle"] = Field(
        "polygon", description="COCO segmentation as polygons, or RLE (exact mask, keeps holes)"
    )
    save_conf: bool = Field(
        False,
        description="also write scores.csv: detector confidence and SAM score of every YOLO label row (label files "
        "stay trainable; COCO always carries them as 'score' and 'sam_score')",
    )
    multipart: Literal["join", "largest"] = Field(
        "join", description="a mask in several parts: join them into one YOLO row as Ultralytics does, or keep the largest"
    )

    flat_labels: bool = Field(
        False,
        description="label files go straight into output_dir (with data.yaml and a list of the labelled images), as "
        "Ultralytics' yolo_bbox2segment writes them, instead of output_dir/labels/ + images/ links",
    )

    split: SplitSettings = Field(
        default_factory=SplitSettings,
        description="data.yaml's splits: {val: 0.1, test: 0.0}, fractions hashed from each image's path (a video's "
        "frames together; train/ val/ test/ folders keep their split); val 0: validate on the training images",
    )

    exports: list[Literal["labelstudio", "cvat", "page"]] = Field(
        default_factory=list,
        description="review files written after the run into output_dir/review/: Label Studio tasks, CVAT "
        "imports, a static review page (also later: annotator export / review)",
    )
    review_image_root: str | None = Field(
        None, description="Label Studio: URL prefix of the images (default: its local-files storage)"
    )

    # -- polygons ---------------------------------------------------------------------------------------
    simplify_tolerance_px: float = Field(0.75, ge=0.0, description="Douglas-Peucker tolerance in pixels (0: off)")
    min_area_px: float = Field(4.0, ge=0.0, description="drop mask parts smaller than this many pixels")
    compat: Literal["none", "ultralytics"] = Field(
        "none",
        description="'ultralytics': polygons exactly as Ultralytics' masks.xyn (no simplification), for comparisons",
    )

    # -- segmenter --------------------------------------------------------------------------------------
    sam_min_score: float = Field(
        0.25, ge=0.0, le=1.0, description="drop masks whose SAM score is not above this (Ultralytics SAM's conf)"
    )

    # -- models and execution -------------------------------------------------------------------------------
    weights_dir: Path | None = Field(None, description=f"folder searched for weight files (env {WEIGHTS_DIR_ENV})")
    batch_size: int = Field(8, ge=1, le=1024, description="images per detector / image-encoder batch")
    half: bool = Field(True, description="bf16/fp16 autocast on GPU (ignored on CPU)")
    engine: Literal["local", "ray"] = Field("local", description="in-process runner or Ray Data pipeline")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="torch CPU threads per model call (default: what Ultralytics picks, cores - 1)"
    )
    workers: int | None = Field(
        None, ge=1, le=256, description="CPU threads decoding/letterboxing and polygonizing (local engine; default: cores)"
    )
    compile: bool = Field(
        False, description="torch.compile the SAM image encoder (fixed-shape batches; pays off on long GPU runs)"
    )
    max_pixels: int = Field(
        178_956_970, ge=1, description="refuse images with more pixels than this, from the header, before decoding"
    )
    min_side_px: int = Field(2, ge=1, description="refuse images with a side shorter than this")
    progress: bool = Field(False, description="show a progress bar")
    trust_weights: bool = Field(
        False,
        description="load weight files that pickle Python objects outside the safe allow-list (runs their code: only "
        "for files you trust)",
    )

    # -- engine settings: where and how many, never what (see annotator/engine_settings.py) ----------------
    ray: RaySettings = Field(default_factory=RaySettings, description="Ray engine settings (engine: ray)")

    # -- scheduled jobs -----------------------------------------------------------------------------------
    frame_stride: int = Field(
        1, ge=1, description="videos: label every n-th source frame (1: every frame; frame numbers stay the source's)"
    )
    keyframe_interval: int = Field(
        5, ge=1, description="videos: run the detector on every n-th labelled frame (the tracker carries masks between)"
    )
    track_match_iou: float = Field(
        0.5, gt=0.0, le=1.0, description="videos: a keyframe detection refreshes the track whose mask it overlaps by "
        "at least this IoU; one that matches none starts a new track"
    )
    track_max_missing: int = Field(
        3, ge=1, description="videos: a track ends after this many keyframes in a row without a mask"
    )
    track_max_unconfirmed: int | None = Field(
        None, ge=1, description="videos: a track ends after this many keyframes in a row with a mask that no "
        "detection matches (drift, a false start); None: a visible track lives on, as in SAM 2"
    )
    hash_inputs: bool = Field(False, description="decide 'modified' by content SHA-256 instead of size + mtime")
    keep_deleted: bool = Field(False, description="keep the labels of inputs that were deleted since the last run")
    weights_sha256: dict[str, str] = Field(
        default_factory=dict, description="pin weight files: {file name or path: SHA-256 hex}; a mismatch stops the run"
    )

    @field_validator("imgsz", mode="before")
    @classmethod
    def _imgsz_as_ultralytics(cls, v: Any) -> int | tuple[int, int]:
        return normalize_imgsz(v)

    @field_validator("det_model", "sam_model", mode="before")
    @classmethod
    def _model_path_like(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("device", mode="before")
    @classmethod
    def _device_as_ultralytics(cls, v: Any) -> Any:
        """``0`` -> ``"0"``, ``torch.device("cuda", 1)`` -> ``"cuda:1"``, ``None`` -> ``""`` (auto), as Ultralytics."""
        if v is None:
            return ""
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        if type(v).__name__ == "device" and type(v).__module__.startswith("torch"):  # no torch import here
            return str(v)
        return v

    @field_validator("classes")
    @classmethod
    def _classes_non_negative(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("must list at least one class id, or be omitted to keep all classes")
            if any(c < 0 for c in v):
                raise ValueError(f"class ids must be >= 0, got {v}")
        return v

    @field_validator("weights_sha256", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return {} if v is None else v

    @field_validator("weights_sha256")
    @classmethod
    def _hex_digests(cls, v: dict[str, str]) -> dict[str, str]:
        for name, digest in v.items():
            d = str(digest).strip().lower()
            if len(d) != 64 or any(c not in "0123456789abcdef" for c in d):
                raise ValueError(f"{name}: a SHA-256 is 64 hex digits, got {digest!r}")
        return {k: str(d).strip().lower() for k, d in v.items()}

    @field_validator("det_model", "sam_model")
    @classmethod
    def _model_not_empty(cls, v: str) -> str:
        v = str(v).strip()
        if not v:
            raise ValueError("must name a weight file, e.g. 'yolo11x.pt' or 'path/to/best.pt'")
        return v

    @field_validator("coco_filename")
    @classmethod
    def _plain_json_name(cls, v: str) -> str:
        if Path(v).name != v or not v.endswith(".json"):
            raise ValueError(f"must be a plain file name ending in .json, got {v!r}")
        return v

    @field_validator("data")
    @classmethod
    def _data_exists(cls, v: Path) -> Path:
        p = absolute_path(v)
        if not p.exists():
            raise ValueError(f"{p} does not exist: pass a folder of images, an image, or a .txt list of images")
        return p

    @model_validator(mode="after")
    def _resolve_paths(self) -> AnnotateConfig:
        if self.prompts == "boxes":
            self._resolve_prompt_labels()
        if self.prompts == "points":
            if self.prompt_points is None:
                raise ValueError("prompts 'points' needs prompt_points (a JSON file of points per image)")
            pts = absolute_path(self.prompt_points)
            if not pts.is_file():
                raise ValueError(f"prompt_points {pts} is not a file: pass the JSON file of point prompts")
            object.__setattr__(self, "prompt_points", pts)
        if self.flat_labels and not self.data.is_dir():
            raise ValueError(f"flat_labels needs data to be a folder of images, got the file {self.data}")
        if self.detector_masks != "ignore" and self.prompts != "detector":
            raise ValueError(f"detector_masks {self.detector_masks!r} needs prompts 'detector' (a -seg detector)")
        out = self.output_dir
        if out is None and self.prompts == "boxes" and self.data.is_dir() and self.data.name == "images":
            out = self.data.parent / "labels-segment"  # where Ultralytics' yolo_bbox2segment writes
        if out is None:
            out = default_output_dir(self.data)
        out = absolute_path(out)
        if out == Path(out.anchor):
            raise ValueError(f"output_dir must not be a file-system root ({out})")
        if out.exists() and not out.is_dir():
            raise ValueError(f"output_dir {out} exists and is not a folder")
        object.__setattr__(self, "output_dir", out)
        check_annotate_paths(self)  # every overlap, on resolved paths (links, '..', bind mounts): one place
        wd = self.weights_dir if self.weights_dir is not None else os.environ.get(WEIGHTS_DIR_ENV) or None
        object.__setattr__(self, "weights_dir", Path(wd).expanduser().absolute() if wd else None)
        return self

    def _resolve_prompt_labels(self) -> None:
        labels = self.prompt_labels
        if labels is None:
            labels = labels_beside(self.data) if self.data.is_dir() else None
            if labels is None:
                raise ValueError(
                    "prompts 'boxes' needs prompt_labels (a YOLO labels folder or a COCO .json), or data in a folder "
                    "named 'images' (its labels are then read from the matching 'labels' folder, as Ultralytics does)"
                )
        labels = absolute_path(labels)
        if not labels.exists():
            raise ValueError(f"prompt_labels {labels} does not exist: pass a YOLO labels folder or a COCO .json file")
        object.__setattr__(self, "prompt_labels", labels)

    # -- derived ------------------------------------------------------------------------------------------
    @property
    def writes_yolo(self) -> bool:
        return self.format in ("yolo", "both")

    @property
    def writes_coco(self) -> bool:
        return self.format in ("coco", "both")

    # -- output layout (see annotator/output.py) ------------------------------------------------------------
    @property
    def is_sibling_layout(self) -> bool:
        """True when ``data`` is a folder ``X/images`` and ``output_dir`` is ``X/labels``, or ``flat_labels`` is
        set: labels go straight into ``output_dir`` and the input folder is the dataset's ``images/``. Otherwise ``output_dir`` becomes
        a dataset root holding ``labels/`` and ``images/`` (links to the inputs)."""
        if self.flat_labels:
            return True
        return self.data.is_dir() and self.data.name == "images" and self.output_dir == self.data.parent / "labels"

    @property
    def labels_dir(self) -> Path:
        """Where the YOLO label files go: ``output_dir`` (sibling layout) or ``output_dir/labels``."""
        return self.output_dir if self.is_sibling_layout else self.output_dir / "labels"

    @property
    def image_links_dir(self) -> Path:
        """Where links to the labelled inputs go (dataset layout): ``output_dir/images``."""
        return self.output_dir / "images"


#: the detector's stride that ``imgsz`` is rounded up to (Ultralytics' predictor rounds again to a model's
#: larger stride, e.g. 64 for P6 models)
IMGSZ_STRIDE = 32


#: The largest ``imgsz`` side taken: one 16384 x 16384 letterboxed RGB float image is already 3 GiB.
IMGSZ_MAX = 16384


def normalize_imgsz(v: Any) -> int | tuple[int, int]:
    """``imgsz`` as Ultralytics' ``check_imgsz`` takes it: ``640``, ``"640"``, ``[640]``, ``[h, w]``, ``(h, w)``,
    ``"[h, w]"``; each side rounded up to a multiple of :data:`IMGSZ_STRIDE` with a warning, as Ultralytics does.
    A square ``[s, s]`` becomes ``s`` (same run fingerprint as ``s``). Sizes below 1 are refused.

    Example:
        >>> normalize_imgsz(640), normalize_imgsz([480, 640]), normalize_imgsz((320, 320)), normalize_imgsz("640")
        (640, (480, 640), 320, 640)
    """
    given = v
    if isinstance(v, str):
        text = v.strip()
        try:
            v = int(text) if text.isdigit() else ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"must be an integer or [height, width], e.g. 640 or [480, 640], got {given!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, list, tuple)):
        raise ValueError(f"must be an integer or [height, width], e.g. 640 or [480, 640], got {given!r}")
    sides = [v] if isinstance(v, int) else list(v)
    if not 1 <= len(sides) <= 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in sides):
        raise ValueError(f"must be an integer or [height, width] of integers, e.g. 640 or [480, 640], got {given!r}")
    if any(x < 1 for x in sides):
        raise ValueError(f"must be positive (e.g. 320, 640, 1024 or [480, 640]), got {given!r}")
    if any(x > IMGSZ_MAX for x in sides):
        raise ValueError(f"must be at most {IMGSZ_MAX} per side, got {given!r}")
    rounded = [max(math.ceil(x / IMGSZ_STRIDE) * IMGSZ_STRIDE, IMGSZ_STRIDE) for x in sides]
    if rounded != sides:
        warnings.warn(
            f"imgsz={given} must be a multiple of the stride {IMGSZ_STRIDE}, updating to "
            f"{rounded[0] if len(rounded) == 1 else rounded} (as Ultralytics does)",
            UserWarning,
            stacklevel=2,
        )
    if len(rounded) == 1 or rounded[0] == rounded[1]:
        return rounded[0]
    return (rounded[0], rounded[1])


def labels_beside(images: Path) -> Path | None:
    """The labels folder that Ultralytics pairs with an images folder: the last ``images`` part of the path
    becomes ``labels`` (``img2label_paths``), or None when the path has no ``images`` part.

    Example:
        >>> labels_beside(Path("/d/images")).as_posix(), labels_beside(Path("/d/images/train")).as_posix()
        ('/d/labels', '/d/labels/train')
        >>> labels_beside(Path("/d/photos")) is None
        True
    """
    parts = list(Path(images).parts)
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return None


def default_output_dir(data: Path) -> Path:
    """Where labels go when ``output_dir`` is not given.

    ``.../images`` (a folder named ``images``) -> ``.../labels``, the layout YOLO trains from;
    anything else -> ``<data>_auto_annotate_labels`` beside it, as Ultralytics' ``auto_annotate`` does.

    Example:
        >>> default_output_dir(Path("/d/images")).as_posix()
        '/d/labels'
        >>> default_output_dir(Path("/d/photos")).as_posix()
        '/d/photos_auto_annotate_labels'
    """
    data = Path(data)
    if data.name == "images" and not data.suffix:
        return data.parent / "labels"
    return data.parent / f"{data.stem}_auto_annotate_labels"


def make_config(**kwargs: Any) -> AnnotateConfig:
    """Build an :class:`AnnotateConfig`, turning pydantic's report into one :class:`ConfigError` line."""
    try:
        return AnnotateConfig(**kwargs)
    except ValidationError as e:
        for err in e.errors():  # an unsafe path keeps its own type (and its one line)
            if isinstance((err.get("ctx") or {}).get("error"), UnsafePathError):
                raise err["ctx"]["error"] from None
        raise ConfigError(describe_validation_error(e)) from None


def describe_validation_error(e: ValidationError) -> str:
    """One line per problem, joined with '; ': ``field: what is wrong (got value)``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown setting {loc!r}{_unknown_hint(err['loc'])}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be")
        value = err.get("input")
        shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
        if "got" in msg:
            shown = ""
        parts.append(f"{loc}: {msg}{shown}")
    return "; ".join(parts)


def _unknown_hint(loc: tuple) -> str:
    """The closest valid name for an unknown key (top level or inside the ``ray:`` / ``everything:`` section)."""
    name = str(loc[-1])
    if len(loc) == 1 and name.startswith("ray_") and name[4:] in RaySettings.model_fields:
        return f" (Ray settings are one section now: ray: {{{name[4:]}: ...}})"
    sections = {"ray": RaySettings, "everything": EverythingSettings, "split": SplitSettings}
    fields = list(((sections.get(str(loc[0])) if len(loc) > 1 else None) or AnnotateConfig).model_fields)
    close = difflib.get_close_matches(name, fields, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(fields)})"


#: settings that are paths: relative values in a config file are taken relative to that file's folder.
_PATH_SETTINGS = ("data", "output_dir", "weights_dir", "prompt_labels", "prompt_points")
#: settings that are a weight *name* (downloaded by name) or a path: resolved against the file's folder when
#: they contain a folder part or name a file that exists there.
_WEIGHT_SETTINGS = ("det_model", "sam_model")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict of settings (validated later by :func:`make_config`).

    Relative paths inside the file are taken relative to the file's folder, so a config works from any
    current directory (a cron job, a CI step): ``data``, ``output_dir``, ``weights_dir`` always; ``det_model``
    and ``sam_model`` when they contain a folder (``models/best.pt``) or name a file beside the config; a bare
    published name such as ``yolo11x.pt`` stays a name (looked up in ``weights_dir`` / downloaded).
    Flags given on the command line are taken relative to the current directory, as usual.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "job.yaml").write_text("data: images\\nsam_model: sam2_b.pt\\n")
        >>> s = load_config_file(d / "job.yaml")
        >>> s["data"] == str(d / "images"), s["sam_model"]
        (True, 'sam2_b.pt')
    """
    from annotator.errors import InputFileError
    from annotator.validation.yaml_safe import load_yaml_file

    p = Path(path)
    if not os.path.lexists(p):
        raise ConfigError(f"config file {p} not found (ready-made ones are in the configs/ folder)")
    raw = load_yaml_file(p)  # regular file, size-limited, no anchors/aliases, finite numbers
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputFileError(p, "top level", "a mapping of setting: value", type(raw).__name__)
    for k in raw:
        if not isinstance(k, str):
            raise InputFileError(p, "top level", "setting names (strings) as keys", k)
    base = p.absolute().parent
    for key in _PATH_SETTINGS:
        v = raw.get(key)
        if isinstance(v, str) and v and not Path(os.path.expanduser(v)).is_absolute():
            raw[key] = str(absolute_path(base / v))  # '..' as the OS reads it (after links)
    for key in _WEIGHT_SETTINGS:
        v = raw.get(key)
        if isinstance(v, str) and v and not Path(os.path.expanduser(v)).is_absolute():
            if len(Path(v).parts) > 1 or (base / v).is_file():
                raw[key] = os.path.normpath(base / v)
    return raw
