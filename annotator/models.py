"""Find and load the detector and segmenter weights.

A weight is named the way Ultralytics users name it: a file name (``"yolo11x.pt"``, ``"sam2_b.pt"``) or a
path. Resolution order, first hit wins:

1. the path as given (absolute, or relative to the current directory);
2. ``weights_dir / name`` (``--weights-dir``, the ``weights_dir`` setting, or ``$ANNOTATOR_WEIGHTS_DIR``);
3. Ultralytics' own weights folder (``yolo settings`` -> ``weights_dir``);
4. a download by Ultralytics, for the names it publishes, when the machine is online.

When none applies, :class:`~annotator.errors.WeightsNotFoundError` says, in one line, which file is missing
and how to supply it, before any image is processed. Nothing is ever pip-installed at run time: importing
this module sets ``YOLO_AUTOINSTALL=false`` unless the user set it.

Loading is safe by default: nothing pickled in a checkpoint runs.

* SAM / SAM 2 checkpoints (state dicts, or ``{"model": state dict}``) load with
  ``torch.load(weights_only=True)``: tensors and plain containers only.
* The YOLO detector loads through Ultralytics' own allow-list loader (``ultralytics.nn.tasks._SafeLoad``, the
  ``ULTRALYTICS_SAFE_LOAD`` mode, switched on for our loads only): ``torch.load(weights_only=True)`` with the
  globals the checkpoint names registered when they are ``nn.Module`` classes of ``ultralytics.nn.modules`` /
  ``ultralytics.nn.tasks`` / ``torch.nn.modules``, or Ultralytics' fixed data globals (``IterableSimpleNamespace``,
  numpy dtypes and scalars, paths, a ``getattr`` limited to module attributes). So every YOLO / -seg / -pose /
  -obb checkpoint Ultralytics saves loads, and the model is built from the safely loaded file (no second load).
  Only ``.pt`` files go through that loader: other suffixes (exports) need ``trust_weights``, as does an
  Ultralytics / torch too old to have it.

A checkpoint that needs anything else (``os.system``, a class of another package) is refused with one line
naming the offending global, read from the file's pickle without running it; ``trust_weights``
(``--trust-weights``) loads it the old, unrestricted way, for files you trust (pin them by SHA-256 with
``weights_sha256``). Before any unpickling, a file is checked to be a whole checkpoint (not empty, a zip archive
not cut short and passing its CRC-32 checks, or a pickle): a truncated, corrupt or non-checkpoint file is
reported as such in one line, in both modes.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from annotator.checkpoints import (
    check_intact,
    corrupt,
    load_failure,
    reason,
    require_safe_det_loader,
    ultralytics_safe_load,
)
from annotator.errors import ModelLoadError, WeightsNotFoundError

os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # never pip-install at run time
os.environ.setdefault("YOLO_VERBOSE", "false")

#: SAM-family weight names Ultralytics knows, mapped to the architecture built for them.
SAM_ARCHITECTURES: dict[str, str] = {
    "sam_h.pt": "sam",
    "sam_l.pt": "sam",
    "sam_b.pt": "sam",
    "mobile_sam.pt": "sam",
    "sam2_t.pt": "sam2",
    "sam2_s.pt": "sam2",
    "sam2_b.pt": "sam2",
    "sam2_l.pt": "sam2",
    "sam2.1_t.pt": "sam2",
    "sam2.1_s.pt": "sam2",
    "sam2.1_b.pt": "sam2",
    "sam2.1_l.pt": "sam2",
}

_RELEASES = "https://github.com/ultralytics/assets/releases"


def sam_architecture(name_or_path: str) -> tuple[str, str]:
    """Return ``(registered_name, family)`` for a SAM weight, e.g. ``("sam2_t.pt", "sam2")``.

    The architecture is read from the end of the file name, as Ultralytics does, so ``my/sam2_t.pt`` and
    ``finetuned_sam2.1_b.pt`` work; any other name is refused with the list of valid endings.

    Example:
        >>> sam_architecture("weights/sam2.1_b.pt")
        ('sam2.1_b.pt', 'sam2')
    """
    fname = Path(str(name_or_path)).name
    # longest match first so that "sam2.1_b.pt" is not taken for "sam_b.pt"-like shorter suffixes
    for key in sorted(SAM_ARCHITECTURES, key=len, reverse=True):
        if fname.endswith(key):
            return key, SAM_ARCHITECTURES[key]
    close = difflib.get_close_matches(fname, list(SAM_ARCHITECTURES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ModelLoadError(
        f"sam_model {name_or_path!r}: can not tell the SAM architecture from the file name; it must end with one of "
        f"{', '.join(SAM_ARCHITECTURES)}.{hint}"
    )


def _offline() -> bool:
    from ultralytics.utils import is_online

    return not is_online()


def resolve_weights(name_or_path: str, *, role: str, weights_dir: Path | None = None) -> Path:
    """Return the local path of a weight file, downloading a published one when online.

    Args:
        name_or_path: ``"yolo11x.pt"``, ``"sam2_b.pt"``, ``"runs/detect/train/weights/best.pt"``...
        role: ``"det_model"`` or ``"sam_model"``, used in messages.
        weights_dir: extra folder to look in (see module docstring).

    Raises:
        WeightsNotFoundError: one line naming the missing file and how to supply it.
    """
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_file():
        return p.absolute()
    if p.exists():
        raise WeightsNotFoundError(f"{role} {str(name_or_path)!r} is a folder, not a weight file")
    name = p.name
    looked = [str(p.absolute())]
    if weights_dir is not None:
        cand = Path(weights_dir) / name
        if cand.is_file():
            return cand.absolute()
        looked.append(str(cand))
    from ultralytics.utils import SETTINGS

    cand = Path(SETTINGS["weights_dir"]) / name
    if cand.is_file():
        return cand.absolute()
    looked.append(str(cand))

    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    published = name in GITHUB_ASSETS_NAMES and p.parent == Path(".")
    how = (
        f"download {name} from {_RELEASES} on a machine with internet and pass its path, or put it in a folder "
        f"given by --weights-dir / $ANNOTATOR_WEIGHTS_DIR"
    )
    if not published:
        close = difflib.get_close_matches(name, sorted(GITHUB_ASSETS_NAMES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise WeightsNotFoundError(
            f"{role} {str(name_or_path)!r} not found{hint}: looked in {', '.join(looked)}; pass the path of an "
            f"existing .pt file or a published name such as 'yolo11x.pt' / 'sam2_b.pt'"
        )
    if _offline():
        raise WeightsNotFoundError(f"{role} {name!r} is not on this machine and it is offline: {how}")
    from ultralytics.utils.downloads import attempt_download_asset

    try:
        got = Path(attempt_download_asset(name))
    except Exception as e:  # network errors come in many types
        raise WeightsNotFoundError(f"{role} {name!r} could not be downloaded ({type(e).__name__}: {e}): {how}") from None
    if not got.is_file():
        raise WeightsNotFoundError(f"{role} {name!r} could not be downloaded: {how}")
    return got.absolute()


@dataclass(frozen=True)
class ResolvedModels:
    """Local weight files for one run, resolved before any image is processed."""

    det_path: Path
    sam_path: Path
    sam_name: str  # registered architecture name, e.g. "sam2_t.pt"
    sam_family: str  # "sam" or "sam2"
    det_sha256: str | None = None  # no detector file (prompts: everything): this digest stands for its weights


def resolve_models(
    det_model: str, sam_model: str, *, weights_dir: Path | None = None, prompt_labels: Path | None = None,
    det_stand_in: str | None = None,
) -> ResolvedModels:
    """Resolve both weight files (and the SAM architecture) or raise a one-line error.

    ``prompt_labels`` (``prompts: boxes``): the labels stand where the detector stands (no detector is loaded;
    their content is hashed in the detector's place, so a changed label re-annotates). ``det_stand_in``
    (``prompts: everything``): a digest of the settings that replace the detector; no detector file is resolved
    and ``det_path`` is ``Path("everything")`` (a name in reports, never opened).
    """
    sam_name, family = sam_architecture(sam_model)
    if det_stand_in is not None:
        det = Path("everything")
    elif prompt_labels is not None:
        det = Path(prompt_labels)
    else:
        det = resolve_weights(det_model, role="det_model", weights_dir=weights_dir)
    sam = resolve_weights(sam_model, role="sam_model", weights_dir=weights_dir)
    return ResolvedModels(det, sam, sam_name, family, det_sha256=det_stand_in)


def load_yolo(path: Path, *, trust: bool = False):
    """Load an Ultralytics YOLO model (detect or segment task) from a local file.

    By default through Ultralytics' allow-list loader: ``torch.load(weights_only=True)`` with the globals a
    genuine Ultralytics checkpoint names registered (see the module docstring).

    Args:
        path: the ``.pt`` file.
        trust: load with full unpickling (runs code pickled in the file), and any format Ultralytics reads.

    Raises:
        ModelLoadError: one line: outside the allow-list (names the global), truncated/corrupt, not a ``.pt``
            file, or not a detector.
    """
    path = Path(path)
    if not trust:
        require_safe_det_loader(path)
    if path.suffix.lower() == ".pt":
        check_intact("det_model", path)
    from ultralytics import YOLO

    try:
        with ultralytics_safe_load(not trust):
            model = YOLO(str(path))
    except Exception as e:
        known = load_failure("det_model", path, e, trust)
        if known is not None:
            raise known from None
        if "outside the supported Ultralytics checkpoint format" in str(e):  # the file holds no model object
            raise ModelLoadError(
                f"det_model {str(path)!r} holds no Ultralytics YOLO model (a SAM or state-dict file?); pass a "
                f"checkpoint saved by Ultralytics (training's best.pt, or model.save())"
            ) from None
        raise ModelLoadError(
            f"det_model {str(path)!r} is not a loadable Ultralytics YOLO model: {reason(e)}"
        ) from None
    if model.task not in ("detect", "segment", "obb", "pose"):
        raise ModelLoadError(f"det_model {str(path)!r} is a {model.task!r} model; a detection (or -seg) model is needed")
    return model


def load_sam(path: Path, sam_name: str, *, trust: bool = False):
    """Build the SAM architecture named by ``sam_name`` and load ``path``'s weights into it.

    The checkpoint must be a state dict (or ``{"model": state dict}``), loaded with ``weights_only=True``
    unless ``trust``. Returns the torch module (``SAMModel`` or ``SAM2Model``) in eval mode on the CPU.

    Raises:
        ModelLoadError: one line: outside the allow-list, truncated/corrupt, or weights of another architecture.
    """
    import torch

    from ultralytics.models.sam.build import sam_model_map
    from ultralytics.utils.patches import torch_load

    path = Path(path)
    builder = sam_model_map[sam_name]
    check_intact("sam_model", path)
    try:
        with open(path, "rb") as f:
            state = torch_load(f, map_location="cpu") if trust else torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise (load_failure("sam_model", path, e, trust) or corrupt("sam_model", path, reason(e))) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        model = builder(None)
        model.load_state_dict(state)
    except Exception as e:
        msg = str(e).splitlines()[0][:300] if str(e) else ""
        raise ModelLoadError(
            f"sam_model {str(path)!r} does not hold {sam_name} weights ({type(e).__name__}: {msg}); the file name must "
            f"match its architecture"
        ) from None
    model.eval()
    return model
