"""YAML for user files (configs, ``data.yaml``): plain data only, no anchors or aliases, finite numbers.

PyYAML's ``safe_load`` builds no objects but expands aliases: a "billion laughs" document of a few hundred
bytes (``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``...) grows to gigabytes under any key. A config needs no
alias, so the loader refuses the first anchor or alias it meets, before anything is expanded.

Example:
    >>> loads_yaml("conf: 0.4\\nformat: coco\\n", "c.yaml")
    {'conf': 0.4, 'format': 'coco'}
    >>> loads_yaml("a: &x [1]\\nb: *x\\n", "c.yaml")
    Traceback (most recent call last):
    ...
    annotator.errors.InputFileError: c.yaml: line 1 column 4: expected plain YAML without anchors or aliases, found anchor &x
"""

from __future__ import annotations

import math

import yaml

from annotator.errors import InputFileError
from annotator.validation.files import MAX_YAML_BYTES, read_user_text

MAX_DEPTH = 32


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that stops at the first anchor or alias event (nothing is expanded)."""

    def compose_node(self, parent, index):  # type: ignore[override]
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent) or anchor is not None:
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            m = event.start_mark
            raise _AliasFound(f"line {m.line + 1} column {m.column + 1}", f"{kind}{anchor}")
        return super().compose_node(parent, index)


class _AliasFound(Exception):
    def __init__(self, place: str, found: str) -> None:
        super().__init__(found)
        self.place, self.found = place, found


def loads_yaml(text: str, path: object):
    """Parse ``text`` (the content of ``path``): plain YAML data, no anchors/aliases, finite floats, depth <= 32."""
    try:
        doc = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except _AliasFound as e:
        raise InputFileError(path, e.place, "plain YAML without anchors or aliases", e.found) from None
    except yaml.YAMLError as e:
        m = getattr(e, "problem_mark", None)
        place = f"line {m.line + 1} column {m.column + 1}" if m is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputFileError(path, place, "valid YAML", problem) from None
    except RecursionError:
        raise InputFileError(path, "", f"YAML nested at most {MAX_DEPTH} deep", "deeper nesting") from None
    _check(doc, path, "", 0)
    return doc


def _check(v, path: object, place: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InputFileError(path, place, f"YAML nested at most {MAX_DEPTH} deep", "deeper nesting")
    if isinstance(v, float) and not math.isfinite(v):
        raise InputFileError(path, place or "value", "a finite number", v)
    if isinstance(v, dict):
        for k, x in v.items():
            _check(x, path, f"{place}.{k}" if place else str(k), depth + 1)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _check(x, path, f"{place}[{i}]", depth + 1)


def load_yaml_file(path: object, *, max_bytes: int = MAX_YAML_BYTES):
    """Read ``path`` (regular files only, at most ``max_bytes``) and parse it with :func:`loads_yaml`."""
    return loads_yaml(read_user_text(path, max_bytes=max_bytes), path)
