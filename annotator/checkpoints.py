"""Checkpoint files inspected and loaded without running their code: the safe-loading internals of
:mod:`annotator.models` (which documents the policy).

* :func:`check_intact`: before any unpickling, a file must be a whole checkpoint (not empty; a zip archive not
  cut short, with ``data.pkl``, passing its CRC-32 checks; or a pickle).
* :func:`_offending_globals`: the globals a checkpoint names outside the allow-list, read from its pickle
  opcodes (``pickletools``), never executed.
* :func:`ultralytics_safe_load`: Ultralytics' allow-list loader switched on for one of our loads.
* :func:`load_failure`: a loader exception -> one-line :class:`~annotator.errors.ModelLoadError`.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import threading
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from pathlib import Path

from annotator.errors import ModelLoadError

_SAFE_LOAD_LOCK = threading.Lock()
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip archive; the legacy one a run of pickles
_TRUST_HINT = "load it only if you trust it, with --trust-weights (trust_weights: true)"


def _safe_loader_missing() -> str | None:
    """Why the installed Ultralytics / torch can not load a detector with the allow-list; None when they can."""
    import torch
    import ultralytics
    from ultralytics.nn import tasks

    if not hasattr(tasks, "_SafeLoad") or not hasattr(tasks, "SAFE_LOAD"):
        return f"Ultralytics {ultralytics.__version__} has no allow-list loader (ULTRALYTICS_SAFE_LOAD): upgrade it"
    if not getattr(tasks._SafeLoad, "SUPPORTED", False):
        return f"torch {torch.__version__} can not list a checkpoint's globals: torch>=2.6 is needed"
    return None


@contextlib.contextmanager
def ultralytics_safe_load(enabled: bool):
    """Make Ultralytics' ``torch_safe_load`` use its allow-list loader (or not) for one of our loads.

    ``ultralytics.nn.tasks.SAFE_LOAD`` (``$ULTRALYTICS_SAFE_LOAD``) is that loader's process-wide default: it is
    set for the duration of our load only, under a lock, so two of our loads never interleave. A YOLO load by
    another thread inside that window is restricted too (the safe direction); a trusted load only lifts the
    restriction when the user had set ``$ULTRALYTICS_SAFE_LOAD`` and asked for ``trust_weights``.
    """
    from ultralytics.nn import tasks

    with _SAFE_LOAD_LOCK:
        saved = tasks.SAFE_LOAD
        tasks.SAFE_LOAD = bool(enabled)
        try:
            yield
        finally:
            tasks.SAFE_LOAD = saved


# ------------------------------------------------------------------------------- damaged files, read first
def _damage(path: Path) -> str | None:
    """Why ``path`` can not be a readable ``torch.save`` checkpoint, found without unpickling it; None if it may be.

    An empty file; a zip archive (``torch.save``'s format) that is cut short, has no ``data.pkl`` or fails a CRC-32
    check (this reads the file once, about 0.1 s per 150 MB); any other file must open as a pickle (the legacy
    format) or it is not a checkpoint at all (an image, a text, an HTML error page saved as ``.pt``).
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    if head == _ZIP_MAGIC:
        return _zip_damage(path)
    if head[:1] != b"\x80":  # pickle PROTO opcode: torch.save's legacy format always starts with it
        return f"not a PyTorch checkpoint: it starts with {head!r}"
    return None


def _zip_damage(path: Path) -> str | None:
    """Why a zip archive is not a whole ``torch.save`` checkpoint (cut short, no ``data.pkl``, bad CRC), or None."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"the zip archive is cut short or damaged: {e}"
    with z:
        infos = z.infolist()
        if not any(i.filename.rpartition("/")[2] == "data.pkl" for i in infos):
            return "a zip archive without data.pkl, not a torch.save checkpoint"
        for info in infos:
            if not info.CRC:  # 0: saved without CRCs (torch.serialization.set_crc32_options(False)): nothing to check
                continue
            try:
                with z.open(info) as member:  # the CRC-32 is checked when the member is read to its end
                    while member.read(1 << 24):
                        pass
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
                return f"{info.filename}: {e}"
    return None


def check_intact(role: str, path: Path) -> None:
    """Raise a one-line error when :func:`_damage` finds a reason, or the file can not be read."""
    try:
        why = _damage(path)
    except OSError as e:
        raise ModelLoadError(f"{role} {str(path)!r} can not be read ({e.strerror or e})") from None
    if why is not None:
        raise corrupt(role, path, why)


# -------------------------------------------------------------------- naming what a refused file pickles
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_NO_PUSH_OPS = {"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "STOP"}


def _scan_pickle(f, found: list[str]) -> None:
    """Append the globals one pickle stream names (``GLOBAL``, ``INST``, ``STACK_GLOBAL``) to ``found``.

    Read with :mod:`pickletools`, which decodes opcodes and runs nothing. ``STACK_GLOBAL`` takes its module and
    name from the two strings pushed before it (directly or through the memo), as the unpickler would.
    """
    pushed: list[object] = []
    memo: dict[object, object] = {}
    for op, arg, _pos in pickletools.genops(f):
        name = op.name
        if name in ("GLOBAL", "INST"):  # protocol 0-2 names are Python 2's, mapped as torch's unpickler maps them
            mod, _, attr = str(arg).partition(" ")
            mod, attr = NAME_MAPPING.get((mod, attr), (IMPORT_MAPPING.get(mod, mod), attr))
            found.append(f"{mod}.{attr}")
        elif name == "STACK_GLOBAL":
            mod, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            found.append(f"{mod}.{attr}" if isinstance(mod, str) and isinstance(attr, str) else "<stack global>")
        if name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else str(arg))
        elif name not in _NO_PUSH_OPS:
            pushed.append(None)
        del pushed[:-4]


def _pickled_globals(path: Path) -> list[str]:
    """Every global the checkpoint's pickles name, in order of appearance; nothing is unpickled.

    A ``torch.save`` zip archive holds one pickle (``data.pkl``). The legacy format is a run of pickles (magic
    number, protocol, system info, the object, storage keys) before raw tensor bytes; a plain pickle is one.
    Reading stops at the first stream that does not decode.
    """
    found: list[str] = []
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == _ZIP_MAGIC
            if not is_zip:
                f.seek(0)
                for _ in range(5):
                    _scan_pickle(f, found)
        if is_zip:
            with zipfile.ZipFile(path) as z:
                pkl = next(n for n in z.namelist() if n.rpartition("/")[2] == "data.pkl")
                with z.open(pkl) as f:
                    _scan_pickle(io.BytesIO(f.read()), found)
    except Exception:  # noqa: BLE001 - the end of what decodes (or raw tensor bytes): keep what was found
        pass
    return found


def _pickle_kind(path: Path) -> str:
    with open(path, "rb") as f:
        return "a pickle" if f.read(4) == _ZIP_MAGIC else "a legacy-format (not zip) pickle"


def _offending_globals(path: Path) -> list[str]:
    """Globals in ``path`` that torch's ``weights_only`` unpickler does not allow now (its defaults, plus what
    Ultralytics' loader registered), e.g. ``['posix.system']``; nothing is unpickled."""
    import torch

    try:  # exact for a torch.save zip archive pickled with protocol 2 (torch's default)
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - legacy format, plain pickle, protocol 4+: our own scan below
        pass
    try:
        from torch import _weights_only_unpickler as wou

        allowed = set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except Exception:  # noqa: BLE001 - private torch API moved: name every global
        allowed = set()
    return list(dict.fromkeys(g for g in _pickled_globals(path) if g not in allowed))


# ------------------------------------------------------------------------------------------ one-line errors
def _refused(role: str, path: Path, offending: list[str]) -> ModelLoadError:
    what = ", ".join(offending[:3]) + (" ..." if len(offending) > 3 else "")
    return ModelLoadError(
        f"{role} {str(path)!r} holds Python objects outside the safe allow-list ({what}): {_TRUST_HINT}"
    )


def corrupt(role: str, path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"{role} {str(path)!r} is a truncated or corrupt checkpoint ({why}); copy or download the file again"
    )


def reason(e: BaseException) -> str:
    """``"Type: message"`` on one line, without Ultralytics' ``ERROR ❌️`` prefix, at most 200 characters."""
    msg = " ".join(str(e).replace("ERROR ❌️", "").split())
    msg = msg if len(msg) <= 200 else msg[:197] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from or while handling, outermost first."""
    out: list[BaseException] = []
    while e is not None and all(e is not x for x in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _is_refusal(e: BaseException) -> bool:
    """torch's ``weights_only`` unpickler, or its global scan, met something outside what it allows."""
    text = str(e)
    refused = "Weights only load failed" in text or "Unsupported operand" in text
    return isinstance(e, pickle.UnpicklingError) and refused


def _is_damaged(e: BaseException) -> bool:
    text = str(e)
    return (
        isinstance(e, EOFError)
        or "PytorchStreamReader" in text
        or "truncated" in text
        or "corrupt" in text
        or (isinstance(e, pickle.UnpicklingError) and not _is_refusal(e))
    )


def load_failure(role: str, path: Path, e: BaseException, trust: bool) -> ModelLoadError | None:
    """The one-line error for a failed load: refused (naming the offending globals) or damaged; else None."""
    chain = _chain(e)
    if not trust and any(_is_refusal(x) for x in chain):
        # the innermost exception is the unpickler's own reason, for a file whose globals we can not name
        unreadable = f"{_pickle_kind(path)} it can not read: {reason(chain[-1])}"
        return _refused(role, path, _offending_globals(path) or [unreadable])
    damaged = next((x for x in reversed(chain) if _is_damaged(x)), None)
    return corrupt(role, path, reason(damaged)) if damaged is not None else None


# ------------------------------------------------------------------------------------------------ loaders
def require_safe_det_loader(path: Path) -> None:
    """Refuse, in one line, a detector file the allow-list loader would not be the one to read."""
    if path.suffix.lower() != ".pt":  # Ultralytics picks the loader by suffix: only .pt goes through torch_safe_load
        raise ModelLoadError(
            f"det_model {str(path)!r} is not a .pt checkpoint, so the safe allow-list loader would not read it "
            f"(Ultralytics loads other files by their suffix): rename a PyTorch checkpoint to .pt, or {_TRUST_HINT}"
        )
    why = _safe_loader_missing()
    if why is not None:
        raise ModelLoadError(f"det_model {str(path)!r} can not be loaded safely here ({why}); or {_TRUST_HINT}")


