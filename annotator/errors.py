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
