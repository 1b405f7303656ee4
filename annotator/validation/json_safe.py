"""Strict JSON for user files: bounded nesting, no NaN / Infinity, no integers beyond what a float holds,
no duplicate keys; every refusal an :class:`~annotator.errors.InputFileError`.

Python's ``json`` accepts ``NaN`` and ``Infinity``, turns ``1e999`` into ``inf``, keeps the last of two equal
keys, and recurses once per nesting level (a file nested 100,000 deep raises ``RecursionError``). Here the
depth is measured first, on the text with its strings removed (C-speed regular expression + numpy), then
the document is parsed with hooks that refuse the rest.

Example:
    >>> loads_strict('{"a": [1, 2.5]}', "p.json")
    {'a': [1, 2.5]}
    >>> loads_strict('{"a": NaN}', "p.json")
    Traceback (most recent call last):
    ...
    annotator.errors.InputFileError: p.json: line 1 column 7: expected a finite number, found NaN
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

from annotator.errors import InputFileError
from annotator.validation.files import read_user_text

#: deepest nesting accepted (a COCO file is 5 deep: doc > annotations > [i] > segmentation > polygon)
MAX_DEPTH = 32
#: the largest integer magnitude accepted: every integer a float64 holds exactly
MAX_INT = 2**53

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


class _Refused(ValueError):
    def __init__(self, expected: str, found: str, token: str = "") -> None:
        super().__init__(expected)
        self.expected, self.found, self.token = expected, found, token or found


def _int(s: str) -> int:
    if len(s.lstrip("-")) > 16 or abs(int(s)) > MAX_INT:
        raise _Refused(f"an integer within +-2**53", s[:40])
    return int(s)


def _float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise _Refused("a finite number", s[:40])
    return v


def _constant(s: str):
    raise _Refused("a finite number", s)


def _pairs(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Refused("unique keys in each object", f"{k!r} twice", json.dumps(k))
        out[k] = v
    return out


def nesting_depth(text: str) -> int:
    """The deepest ``[`` / ``{`` nesting of a JSON text (brackets inside strings not counted)."""
    brackets = _STRING.sub("", text).encode("ascii", "replace").translate(None, _NOT_BRACKETS)
    b = np.frombuffer(brackets, np.uint8)
    step = np.where((b == ord("[")) | (b == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(step).max()) if len(step) else 0


def loads_strict(text: str, path: object, *, max_depth: int = MAX_DEPTH):
    """Parse ``text`` (the content of ``path``) as strict JSON (see the module docstring)."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise InputFileError(path, "", f"JSON nested at most {max_depth} deep", f"{depth} levels")
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant,
                          object_pairs_hook=_pairs)  # fmt: skip
    except _Refused as e:
        raise InputFileError(path, _where(text, e), e.expected, e.found) from None
    except json.JSONDecodeError as e:
        raise InputFileError(path, f"line {e.lineno} column {e.colno}", "valid JSON", e.msg) from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
        raise InputFileError(path, "", "valid JSON", f"{type(e).__name__}: {str(e)[:60]}") from None


def _where(text: str, e: _Refused) -> str:
    """``line L column C`` of the refused token when it can be found in the text, else ``""``."""
    i = text.find(e.token) if e.token else -1
    if i < 0:
        return ""
    line = text.count("\n", 0, i) + 1
    return f"line {line} column {i - (text.rfind(chr(10), 0, i) + 1) + 1}"


def load_json_file(path: object, *, max_bytes: int, max_depth: int = MAX_DEPTH):
    """Read (regular files only, size-limited; see :mod:`annotator.validation.files`) and parse strictly."""
    return loads_strict(read_user_text(path, max_bytes=max_bytes), path, max_depth=max_depth)
