r'''CSV files the tool writes (``scores.csv``, ``review_queue.csv``): one writer, so any name stays one field.

Rows end with ``\r\n`` (RFC 4180). Python's ``csv`` writer quotes a field only when it holds the delimiter, the
quote character or a character of the line terminator: with ``\n`` alone a class or file name holding a carriage
return (``"cr\rx"``) would be written bare and read back as two rows. With ``\r\n`` both are quoted, and every
reader (``csv`` with ``newline=""``, pandas, spreadsheets) gets the names back exactly.

Example:
    >>> import csv, io
    >>> buf = io.StringIO(); w = csv_writer(buf); _ = w.writerow(["a\rb", 'q"', "x,y", 1])
    >>> buf.getvalue()
    '"a\rb","q""","x,y",1\r\n'
    >>> next(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    ['a\rb', 'q"', 'x,y', '1']
'''

from __future__ import annotations

import csv
from typing import Any, TextIO

__all__ = ["csv_writer"]


def csv_writer(buf: TextIO) -> Any:
    """A ``csv.writer`` on ``buf`` that keeps every field one field (see the module docstring)."""
    return csv.writer(buf, lineterminator="\r\n")
