"""The run ledger: one SQLite row per input, so re-runs do only new work and killed runs resume exactly.

File: ``<output_dir>/.annotator/ledger.sqlite`` (WAL journal: a ``kill -9`` never corrupts it).

Table ``items`` (one row per input, keyed by its POSIX path relative to ``data``):

===============  ============================================================================
rel_path         key, e.g. ``"sub/a.jpg"``
size, mtime_ns   the file's size in bytes and modification time when it was processed
sha256           content hash (only with ``hash_inputs``; then it decides "modified")
model_fp         fingerprint of the model files and every setting that changes masks/polygons
status           ``ok`` ``empty`` ``decode_error`` ``too_small`` ``too_large`` ``unsupported`` ``failed``
reason           one line for a non-ok status
instances        number of instances
seconds          processing seconds of this image
image_h, image_w decoded size (None when not decoded)
result_json      the image's instances (class, confidences, polygons in pixels, area, bbox, RLE):
                 every output format is rebuilt from it without running the models again
dropped_json     detections that gave no label row, by reason: ``{"below_min_area_px": 2}`` (``{}``
                 none; NULL for a row written before the column existed: unknown)
coco_json        the image's COCO annotations as written, one compact JSON object per line *without* the
                 leading ``"id"`` / ``"image_id"`` keys (added when the file is assembled); NULL until built
coco_key         the COCO settings ``coco_json`` was built for (``"polygon:2"``): another key rebuilds it
updated_at       UNIX time of the last write
===============  ============================================================================

Schema changes are additive: a column added later is appended to an existing ledger when it is opened
(:func:`add_missing_columns`, ``PRAGMA user_version`` = :data:`SCHEMA_VERSION`), so an older output folder
keeps working (its old rows read NULL in the new columns).

Table ``meta``: ``output_fp`` (fingerprint of the format settings the label files were last written with);
``items_generation`` (an integer that triggers raise on every insert, update or delete in ``items``: an output
built at generation G from the same inputs and settings needs no rebuild while it is still G); ``built:<output>``
(what each run-level output was last built from, see :mod:`annotator.output`).

A row is written *after* the image's label file was renamed into place, so a crash between the two only
makes the next run redo that image (the same bytes again): every image is labelled exactly once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotator.records import ImageResult, ImageStatus, PolygonInstance, SourceItem

LEDGER_DIRNAME = ".annotator"
LEDGER_FILENAME = "ledger.sqlite"

#: statuses that a re-run retries even when neither the file nor the settings changed (transient errors)
RETRIED_STATUSES = frozenset({ImageStatus.FAILED.value})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    rel_path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    model_fp TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    instances INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0,
    image_h INTEGER,
    image_w INTEGER,
    result_json TEXT,
    updated_at REAL NOT NULL,
    dropped_json TEXT,
    coco_json TEXT,
    coco_key TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: ``meta`` key of the items generation (see the module docstring)
GENERATION_KEY = "items_generation"

_TRIGGERS = "".join(
    f"""
CREATE TRIGGER IF NOT EXISTS items_generation_{event.lower()} AFTER {event} ON items BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = '{GENERATION_KEY}';
END;"""
    for event in ("INSERT", "UPDATE", "DELETE")
)

#: 1: the first ledger; 2: ``items.dropped_json`` (and ``videos.dropped_json``); 3: ``items.coco_json`` /
#: ``coco_key`` and the ``items_generation`` triggers
SCHEMA_VERSION = 3

#: columns added after version 1, appended to older ledgers on open: table -> ((column, SQL type), ...)
ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "items": (("dropped_json", "TEXT"), ("coco_json", "TEXT"), ("coco_key", "TEXT")),
}

#: rel_paths per ``IN (...)`` query of the bulk reads (below SQLite's 999-parameter floor)
_CHUNK = 500


def add_missing_columns(db: sqlite3.Connection, added: dict[str, tuple[tuple[str, str], ...]]) -> None:
    """Append the ``added`` columns a ledger made by an older version lacks (``ALTER TABLE ... ADD COLUMN``:
    existing rows read NULL there); tables that do not exist are left alone. Idempotent."""
    for table, columns in added.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if not have:
            continue
        for name, decl in columns:
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


@dataclass(frozen=True)
class FileStat:
    """What identifies the version of an input file."""

    size: int
    mtime_ns: int
    sha256: str | None = None

    @classmethod
    def of(cls, path: Path, *, with_hash: bool = False) -> FileStat:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, sha256_file(path) if with_hash else None)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ImageSizeColumns:
    """``image_hw`` of a ledger row from its ``image_h`` / ``image_w`` columns (None until the size is known)."""

    image_h: int | None
    image_w: int | None

    @property
    def image_hw(self) -> tuple[int, int] | None:
        return (self.image_h, self.image_w) if self.image_h is not None and self.image_w is not None else None


@dataclass(frozen=True)
class LedgerRow(ImageSizeColumns):
    rel_path: str
    size: int
    mtime_ns: int
    sha256: str | None
    model_fp: str
    status: str
    reason: str
    instances: int
    seconds: float
    image_h: int | None
    image_w: int | None
    result_json: str | None
    dropped_json: str | None = None

    @property
    def dropped(self) -> dict[str, int]:
        """``{reason: count}`` of the detections that gave no label row (empty when none or unknown)."""
        return dropped_from_json(self.dropped_json)


def dropped_to_json(dropped: dict[str, int]) -> str:
    """``{reason: count}`` as compact JSON, reasons in :data:`~annotator.records.DROP_REASONS` order."""
    from annotator.records import DROP_REASONS

    return json.dumps({r: int(dropped[r]) for r in DROP_REASONS if dropped.get(r)}, separators=(",", ":"))


def dropped_from_json(text: str | None) -> dict[str, int]:
    """Inverse of :func:`dropped_to_json` (NULL: ``{}``)."""
    return {str(k): int(v) for k, v in json.loads(text).items()} if text else {}


def instances_to_json(instances: Iterable[PolygonInstance]) -> str:
    """Serialise polygonized instances losslessly (floats as shortest round-trip repr)."""
    out = []
    for i in instances:
        d = {
            "c": int(i.class_id),
            "dc": float(i.det_conf),
            "ss": float(i.sam_score),
            "p": [np.asarray(p, dtype=np.float64).reshape(-1).tolist() for p in i.polygons_xy_px],
            "a": int(i.area_px),
            "b": [float(v) for v in i.bbox_xywh_px],
            "r": i.rle,
        }
        if i.track_id is not None:  # video frames only: images' rows stay as they were
            d["t"] = int(i.track_id)
        if i.attributes is not None:  # prompts: boxes from COCO labels with extra fields
            d["at"] = i.attributes
        out.append(d)
    return json.dumps(out, separators=(",", ":"), allow_nan=False)


def instances_from_json(text: str | None) -> tuple[PolygonInstance, ...]:
    """Inverse of :func:`instances_to_json`."""
    if not text:
        return ()
    return tuple(
        PolygonInstance(
            class_id=d["c"],
            det_conf=d["dc"],
            sam_score=d["ss"],
            polygons_xy_px=[np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in d["p"]],
            area_px=d["a"],
            bbox_xywh_px=tuple(d["b"]),
            rle=d["r"],
            track_id=d.get("t"),
            attributes=d.get("at"),
        )
        for d in json.loads(text)
    )


class Ledger:
    """SQLite-backed record of what was produced for each input.

    Example:
        >>> import tempfile
        >>> led = Ledger(Path(tempfile.mkdtemp()))
        >>> led.get("a.jpg") is None
        True
        >>> led.close()
    """

    def __init__(self, output_dir: Path) -> None:
        from annotator.io_atomic import ensure_real_dir

        self.dir = ensure_real_dir(Path(output_dir) / LEDGER_DIRNAME, output_dir)
        self.path = self.dir / LEDGER_FILENAME
        from annotator.path_guard import check_write

        check_write(self.path, "create")  # and its -wal / -shm beside it
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            if self.db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                add_missing_columns(self.db, ADDED_COLUMNS)
                self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, '0')", (GENERATION_KEY,))
                self.db.executescript(_TRIGGERS)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise ledger_error(e, self.path) from None

    # -- reads ------------------------------------------------------------------------------------------------
    def get(self, rel_path: str) -> LedgerRow | None:
        cur = self.db.execute(
            "SELECT rel_path, size, mtime_ns, sha256, model_fp, status, reason, instances, seconds, image_h, image_w,"
            " result_json, dropped_json FROM items WHERE rel_path = ?",
            (rel_path,),
        )
        row = cur.fetchone()
        return LedgerRow(*row) if row else None

    def plan_rows(self) -> dict[str, tuple]:
        """Every row's ``rel_path -> (size, mtime_ns, sha256, model_fp, status)``: one query (what planning needs).

        Example:
            >>> import tempfile
            >>> led = Ledger(Path(tempfile.mkdtemp()))
            >>> led.plan_rows()
            {}
        """
        return {r[0]: r[1:] for r in self.db.execute("SELECT rel_path, size, mtime_ns, sha256, model_fp, status FROM items")}

    def rows_for(
        self, rel_paths: Sequence[str], columns: str, *, chunked: bool = False
    ) -> Iterator[tuple[str, tuple | None]]:
        """``(rel_path, (columns...) or None)`` for each of ``rel_paths``, in their order, streamed.

        ``rel_paths`` sorted (as a scan gives them) and not ``chunked``: one query, merged with the list (memory
        flat; do not write to the ledger before the iterator is exhausted). Otherwise one query per 500 paths, each
        read whole before its rows are yielded (writes in between are safe). ``columns``: ``items`` columns, e.g.
        ``"status, image_h, image_w"``.
        """
        if not chunked and all(a < b for a, b in zip(rel_paths, rel_paths[1:])):
            cur = self.db.execute(f"SELECT rel_path, {columns} FROM items ORDER BY rel_path")
            row = next(cur, None)
            for p in rel_paths:
                while row is not None and row[0] < p:
                    row = next(cur, None)
                yield (p, row[1:]) if row is not None and row[0] == p else (p, None)
            cur.close()
            return
        for k in range(0, len(rel_paths), _CHUNK):
            chunk = list(rel_paths[k : k + _CHUNK])
            marks = ",".join("?" * len(chunk))
            found = {r[0]: r[1:] for r in self.db.execute(f"SELECT rel_path, {columns} FROM items WHERE rel_path IN ({marks})", chunk)}
            yield from ((p, found.get(p)) for p in chunk)

    def rows(self) -> Iterator[LedgerRow]:
        """Every row ordered by ``rel_path`` (code-point order, as ``sorted``), streamed by one query."""
        cur = self.db.execute(
            "SELECT rel_path, size, mtime_ns, sha256, model_fp, status, reason, instances, seconds, image_h, image_w,"
            " result_json, dropped_json FROM items ORDER BY rel_path"
        )
        for row in cur:
            yield LedgerRow(*row)

    def generation(self) -> int:
        """The items generation: changes whenever any row of ``items`` is inserted, replaced or deleted."""
        return int(self.meta(GENERATION_KEY) or 0)

    def set_coco(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Store ``(coco_json, coco_key, rel_path)`` fragments, in one transaction (built for rows that lacked them)."""
        rows = list(rows)
        if not rows:
            return
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("UPDATE items SET coco_json = ?, coco_key = ? WHERE rel_path = ?", rows)
        except sqlite3.Error as e:
            raise ledger_error(e, self.path) from None

    def rel_paths(self) -> Iterator[str]:
        for (p,) in self.db.execute("SELECT rel_path FROM items ORDER BY rel_path"):
            yield p

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- writes (each commits at once) ----------------------------------------------------------------------------
    def _write(self, sql: str, params) -> None:
        try:
            if isinstance(params, list):
                self.db.executemany(sql, params)
            else:
                self.db.execute(sql, params)
        except sqlite3.Error as e:
            raise ledger_error(e, self.path) from None

    def record(
        self, result: ImageResult, stat: FileStat, model_fp: str, *, result_json: str | None = None,
        coco: tuple[str, str] | None = None,
    ) -> None:  # fmt: skip
        """Insert or replace the row of ``result``. ``result_json``: :func:`instances_to_json` of its instances when
        the caller made it already; ``coco``: ``(coco_json, coco_key)`` when the caller built the COCO fragment."""
        h, w = result.image_hw if result.image_hw else (None, None)
        processed = result.status in (ImageStatus.OK, ImageStatus.EMPTY)
        if processed and result_json is None:
            result_json = instances_to_json(result.instances)
        coco_json, coco_key = coco if coco is not None and processed else (None, None)
        self._write(
            "INSERT OR REPLACE INTO items (rel_path, size, mtime_ns, sha256, model_fp, status, reason, instances,"
            " seconds, image_h, image_w, result_json, updated_at, dropped_json, coco_json, coco_key)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                result.item.rel_path,
                stat.size,
                stat.mtime_ns,
                stat.sha256,
                model_fp,
                result.status.value,
                result.reason,
                len(result.instances),
                float(sum(result.seconds.values())),
                h,
                w,
                result_json if processed else None,
                time.time(),
                dropped_to_json(result.dropped),
                coco_json,
                coco_key,
            ),
        )

    def record_many(self, rows: Sequence[tuple], model_fp: str) -> None:
        """:meth:`record` for each ``(result, stat, result_json, coco)`` of ``rows``, in **one** transaction
        (a batch of label files made durable together, then their rows: all or none)."""
        if not rows:
            return
        try:
            self.db.execute("BEGIN")
            try:
                for result, stat, result_json, coco in rows:
                    self.record(result, stat, model_fp, result_json=result_json, coco=coco)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise ledger_error(e, self.path) from None

    def forget(self, rel_paths: Iterable[str]) -> None:
        self._write("DELETE FROM items WHERE rel_path = ?", [(p,) for p in rel_paths])

    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (no write at all when it is already stored: no-op runs touch nothing)."""
        if self.meta(key) != value:
            self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error:  # pragma: no cover
            pass


def ledger_error(e: sqlite3.Error, path: Path) -> Exception:
    """One-line error for a failing ledger, naming the real cause; only a damaged file is called damaged.

    A full disk, a read-only folder or a permission problem leaves the ledger intact: the message says to
    fix the cause and re-run, never to delete it.
    """
    from annotator.errors import AnnotatorError, OutputError

    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    low = text.lower()
    if "not a database" in low or "malformed" in low or "file is encrypted" in low:
        return AnnotatorError(
            f"ledger {path} is damaged ({text}): move it away to rebuild the output folder's state from scratch "
            f"(labels already written are kept and re-annotated)"
        )
    if "readonly" in low or "read-only" in low:
        cause = "the folder or file is read-only"
    elif "full" in low:
        cause = "the disk is full"
    elif "unable to open" in low or "permission" in low or "access" in low:
        cause = "it can not be opened (permissions?)"
    elif "locked" in low:
        cause = "another process holds it"
    else:
        cause = "an I/O error"
    return OutputError(f"cannot write the ledger {path}: {text} ({cause}); it is intact: fix that and re-run")


def is_current(row: LedgerRow | tuple | None, stat: FileStat, model_fp: str) -> bool:
    """True when ``row`` was produced from this version of the file with these models and settings.

    ``row``: a :class:`LedgerRow`, or a ``(size, mtime_ns, sha256, model_fp, status)`` tuple of
    :meth:`Ledger.plan_rows`."""
    if row is None:
        return False
    if isinstance(row, tuple):
        size, mtime_ns, sha256, fp, status = row
    else:
        size, mtime_ns, sha256, fp, status = row.size, row.mtime_ns, row.sha256, row.model_fp, row.status
    if fp != model_fp or status in RETRIED_STATUSES:
        return False
    if stat.sha256 is not None and sha256 is not None:
        return sha256 == stat.sha256
    return size == stat.size and mtime_ns == stat.mtime_ns


def stat_items(items: Iterable[SourceItem], *, with_hash: bool = False) -> dict[str, FileStat | None]:
    """``rel_path -> FileStat`` (None for a file that vanished or can't be stat'ed)."""
    out: dict[str, FileStat | None] = {}
    for it in items:
        try:
            out[it.rel_path] = FileStat.of(it.path, with_hash=with_hash)
        except OSError:
            out[it.rel_path] = None
    return out
