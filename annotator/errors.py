"""Exceptions with one-line messages that say what went wrong and what to do.

The CLI prints ``str(error)`` of an :class:`AnnotatorError` as a single line (no traceback) and exits
with :data:`EXIT_UNUSABLE`.
"""

from __future__ import annotations


class AnnotatorError(Exception):
    """Base class: an error the user can fix; its message is one actionable line."""


class ConfigError(AnnotatorError, ValueError):
    """A setting is invalid (value, type, unknown key, bad combination)."""


class WeightsNotFoundError(AnnotatorError, FileNotFoundError):
    """A model weight file is missing and can not be fetched."""


class ModelLoadError(AnnotatorError):
    """A weight file exists but can not be loaded as the expected kind of model."""


class OutputError(AnnotatorError):
    """The output folder could not be written (disk full, read-only, permission, a link inside it).

    The run stops at once: every file written before is complete and recorded, so the same command resumes
    once the cause is fixed. The CLI exits with ``EXIT_OUTPUT_ERROR`` (3), distinct from "some inputs failed".
    """


def describe_os_error(e: OSError, path: object = None) -> str:
    """``"<path>: <strerror> (<ERRNO NAME>)"`` for an ``OSError``, one line.

    Example:
        >>> import errno
        >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device"), "/out/a.txt")
        '/out/a.txt: No space left on device (ENOSPC)'
    """
    import errno as _errno

    where = path if path is not None else (e.filename if getattr(e, "filename", None) else None)
    name = _errno.errorcode.get(e.errno or -1, "")
    cause = (e.strerror or str(e) or type(e).__name__).strip().splitlines()[0]
    code = f" ({name})" if name else ""
    return f"{where}: {cause}{code}" if where is not None else f"{cause}{code}"


class InputFileError(ConfigError):
    """A file the user handed in (config, prompt labels or points, ground truth, review export) is unusable.

    One error shape for every reader: the file, the place in it (a key path such as ``annotations[3].bbox``
    or ``line 12``), what was expected and what was found. The CLI prints it as one line and exits 2.

    Example:
        >>> str(InputFileError("gt.json", "annotations[3].bbox", "4 finite numbers", "[1, 2]"))
        'gt.json: annotations[3].bbox: expected 4 finite numbers, found [1, 2]'
    """

    def __init__(self, path: object, place: str, expected: str, found: object = None) -> None:
        self.path, self.place, self.expected, self.found = str(path), place, expected, found
        text = f"{self.path}: {place}: expected {expected}" if place else f"{self.path}: expected {expected}"
        if found is not None:
            shown = found if isinstance(found, str) else repr(found)
            shown = shown.replace("\n", "\\n").replace("\r", "\\r")
            text += f", found {shown[:80] + '...' if len(shown) > 80 else shown}"
        super().__init__(text)
