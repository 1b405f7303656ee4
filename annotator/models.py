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

Loading is safe by default: nothing pickled in a checkpoint runs. SAM checkpoints (plain state dicts) load
with ``torch.load(weights_only=True)``; the YOLO detector loads through Ultralytics' own allow-list loader
(``weights_only=True`` plus the Ultralytics / torch model classes the checkpoint names; the
``ULTRALYTICS_SAFE_LOAD`` mode, switched on for our loads only). A checkpoint that needs anything else is
refused with one line naming the offending global; ``trust_weights`` (``--trust-weights``) loads it the old,
unrestricted way, for files you trust (pin them by SHA-256 with ``weights_sha256``). A truncated or corrupt
file is reported as such.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path

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


def resolve_models(det_model: str, sam_model: str, *, weights_dir: Path | None = None) -> ResolvedModels:
    """Resolve both weight files (and the SAM architecture) or raise a one-line error."""
    sam_name, family = sam_architecture(sam_model)
    det = resolve_weights(det_model, role="det_model", weights_dir=weights_dir)
    sam = resolve_weights(sam_model, role="sam_model", weights_dir=weights_dir)
    return ResolvedModels(det, sam, sam_name, family)


_SAFE_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _ultralytics_safe_load(enabled: bool):
    """Switch Ultralytics' allow-list loader (``ULTRALYTICS_SAFE_LOAD``) on or off for one load."""
    from ultralytics.nn import tasks

    with _SAFE_LOAD_LOCK:
        saved = tasks.SAFE_LOAD
        tasks.SAFE_LOAD = bool(enabled)
        try:
            yield
        finally:
            tasks.SAFE_LOAD = saved


def _unsafe_globals(path: Path, allowed: set[str]) -> list[str]:
    """Globals a checkpoint names that are not in ``allowed`` (e.g. ``['posix.system']``)."""
    import torch

    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint: nothing to name
        return []
    return [g for g in needed if g not in allowed]


def _refused(role: str, path: Path, offending: list[str]) -> ModelLoadError:
    what = ", ".join(offending[:3]) + (" ..." if len(offending) > 3 else "") if offending else "unknown objects"
    return ModelLoadError(
        f"{role} {str(path)!r} holds Python objects outside the safe allow-list ({what}); loading it would run "
        f"their code: load it only if you trust it, with --trust-weights (trust_weights: true)"
    )


def _corrupt(role: str, path: Path, e: BaseException) -> ModelLoadError:
    msg = " ".join(str(e).split())[:200]
    return ModelLoadError(
        f"{role} {str(path)!r} is a truncated or corrupt checkpoint ({type(e).__name__}: {msg}); copy or download "
        f"the file again"
    )


def _is_damaged(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, EOFError) or "PytorchStreamReader" in text or "truncated" in text or "corrupt" in text or (
        isinstance(e, pickle.UnpicklingError) and "Weights only load failed" not in text
    )


def load_yolo(path: Path, *, trust: bool = False):
    """Load an Ultralytics YOLO model (detect or segment task) from a local file.

    Args:
        path: the ``.pt`` file.
        trust: load with full unpickling (runs code pickled in the file). Default: the allow-list loader.

    Raises:
        ModelLoadError: one line: outside the allow-list (names the global), truncated/corrupt, or not a detector.
    """
    from ultralytics import YOLO

    try:
        with _ultralytics_safe_load(not trust):
            model = YOLO(str(path))
    except Exception as e:
        cause = e.__cause__ or e
        if not trust and ("outside the supported Ultralytics checkpoint format" in str(e) or "Weights only" in str(cause)):
            from ultralytics.nn.tasks import _SafeLoad

            allowed = set(_SafeLoad._registry or {})
            raise _refused("det_model", path, _unsafe_globals(path, allowed)) from None
        if "truncated" in str(e) or _is_damaged(cause):
            raise _corrupt("det_model", path, cause) from None
        raise ModelLoadError(f"det_model {str(path)!r} is not a loadable Ultralytics YOLO model: {type(e).__name__}: {e}") from None
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

    builder = sam_model_map[sam_name]
    try:
        with open(path, "rb") as f:
            state = torch_load(f, map_location="cpu") if trust else torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        if not trust and "Weights only load failed" in str(e):
            raise _refused("sam_model", path, _unsafe_globals(path, set())) from None
        raise _corrupt("sam_model", path, e) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        model = builder(None)
        model.load_state_dict(state)
    except Exception as e:
        msg = str(e).splitlines()[0][:300]
        raise ModelLoadError(
            f"sam_model {str(path)!r} does not hold {sam_name} weights ({type(e).__name__}: {msg}); the file name must "
            f"match its architecture"
        ) from None
    model.eval()
    return model
