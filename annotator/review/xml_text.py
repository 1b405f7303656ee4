"""Any string as well-formed XML 1.0: the one place review files escape names (file and class names).

XML 1.0 can not hold every character at all, not even as a character reference: the C0 controls other than
tab, line feed and carriage return (``\\x00``-``\\x08``, ``\\x0b``, ``\\x0c``, ``\\x0e``-``\\x1f``), lone surrogates
(a non-UTF-8 file name decoded by ``os.fsdecode``) and ``\\ufffe`` / ``\\uffff``. :func:`xml_legal` writes each of
them as its Python escape (``\\x01``, ``\\udcff``); every other character is kept. A name is therefore changed
only where XML could not carry it, and the same function maps the names that a tool matches against the XML
(Label Studio's ``polygonlabels`` in ``tasks.json`` against its labeling config), so they still agree.

* :func:`xml_text`: element content (``& < >`` escaped, and a carriage return as ``&#13;``: a parser turns a
  literal one into a line feed).
* :func:`xml_attr`: a double-quoted attribute value (also ``"``, and tab / line breaks as character
  references, so a parser's attribute-value normalisation does not turn them into spaces).

Example:
    >>> xml_legal("a\\x01b")
    'a\\\\x01b'
    >>> xml_text('<cat & "dog">')
    '&lt;cat &amp; "dog"&gt;'
    >>> xml_attr('new\\nline "q"\\x1f')
    '"new&#10;line &quot;q&quot;\\\\x1f"'
"""

from __future__ import annotations

import re

__all__ = ["xml_attr", "xml_legal", "xml_text"]

#: characters XML 1.0 forbids (https://www.w3.org/TR/xml/#charsets)
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _escape_one(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def xml_legal(value: object) -> str:
    """``str(value)`` with the characters XML 1.0 can not hold written as ``\\xNN`` / ``\\uNNNN``."""
    return _ILLEGAL.sub(_escape_one, str(value))


def xml_text(value: object) -> str:
    """``value`` as XML element content."""
    return xml_legal(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def xml_attr(value: object) -> str:
    """``value`` as a double-quoted XML attribute value, quotes included."""
    text = xml_text(value).replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")
    return f'"{text}"'
