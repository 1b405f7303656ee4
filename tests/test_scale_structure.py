"""The structure that keeps a nightly re-run flat in N (issue 19): a no-op run costs a constant number of SQL
statements whatever the folder's size, and leaves every output file as it was (same inode, same mtime).

Runs the real engine through ``api.run`` with the latency-0 stand-in models of ``benchmarks/overlap.py`` on tiny
images (``benchmarks/scale.py`` measures the same operations at 1k-10k images).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from annotator import ledger as ledger_mod
from annotator.api import run
from annotator.config import make_config
from annotator.stages import Stages
from benchmarks.overlap import FixedLatencyDetector, FixedLatencySegmenter
from benchmarks.scale import write_images


def _run(root: Path, **extra):
    cfg = make_config(data=root / "images", det_model=str(root / "det.pt"), sam_model=str(root / "sam2_t.pt"),
                      output_dir=root / "labels", device="cpu", format="both", save_conf=True, batch_size=8,
                      workers=1, **extra)  # fmt: skip
    stages = Stages(FixedLatencyDetector(0.0, 2, imgsz=64), FixedLatencySegmenter(0.0),  # type: ignore[arg-type]
                    Stages.build_polygonizer(cfg), det_batch=8)  # fmt: skip
    summary = run(cfg, engine_options={"stages": stages})
    assert summary.failed == 0
    return summary


def _folder(root: Path, n: int) -> Path:
    write_images(root / "images", 0, n)
    for name in ("det.pt", "sam2_t.pt"):
        (root / name).write_bytes(b"stand-in " + name.encode())
    return root


def _outputs(out: Path) -> dict[str, tuple[int, int]]:
    """``relative path -> (inode, mtime_ns)`` of every output file but the run report and the ledger folder."""
    found = {}
    for dirpath, dirs, files in os.walk(out):
        dirs[:] = [d for d in dirs if d != ".annotator"]
        for f in files:
            p = Path(dirpath) / f
            if p.name != "run_report.json":
                st = p.stat()
                found[p.relative_to(out).as_posix()] = (st.st_ino, st.st_mtime_ns)
    return found


@pytest.fixture
def traced(monkeypatch):
    """Every SQL statement any :class:`~annotator.ledger.Ledger` of the test runs, in order."""
    statements: list[str] = []
    real_init = ledger_mod.Ledger.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        self.db.set_trace_callback(statements.append)

    monkeypatch.setattr(ledger_mod.Ledger, "__init__", init)
    return statements


def _noop_statements(root: Path, traced: list[str]) -> list[str]:
    first = _run(root)
    assert first.annotated == first.images_seen
    before = _outputs(root / "labels")
    assert {"data.yaml", "labelled_images.list", "scores.csv", "annotations.json"} <= set(before)
    traced.clear()
    again = _run(root)
    assert again.annotated == 0 and again.unchanged == first.images_seen
    assert _outputs(root / "labels") == before, "a no-op run touched an output file"
    return list(traced)


def test_noop_statements_do_not_grow_with_n_and_touch_no_file(tmp_path, traced):
    small = _noop_statements(_folder(tmp_path / "n20", 20), traced)
    large = _noop_statements(_folder(tmp_path / "n80", 80), traced)
    assert len(large) == len(small), (len(small), len(large), large)
    assert not [s for s in large if "WHERE rel_path = " in s], "a per-image SELECT in a no-op run"
    assert not [s for s in large if s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))], "a no-op wrote"


def test_added_images_rebuild_coco_from_fragments_as_a_fresh_run(tmp_path):
    """+10 images: COCO, list and scores equal those of one fresh run over all images (byte for byte)."""
    inc = _folder(tmp_path / "inc", 30)
    _run(inc)
    write_images(inc / "images", 30, 10)
    _run(inc)
    fresh = _folder(tmp_path / "fresh", 30)
    write_images(fresh / "images", 30, 10)
    _run(fresh)
    strip = lambda p: p.read_text().replace(str(p.parents[1]), "ROOT")  # noqa: E731  (absolute paths differ)
    for name in ("annotations.json", "scores.csv", "labelled_images.list", "data.yaml"):
        assert strip(inc / "labels" / name) == strip(fresh / "labels" / name), name


def test_ledger_without_fragments_gets_them_once_and_the_same_coco(tmp_path):
    """A ledger of an older version (no ``coco_json``, no ``built:`` keys): the next run rebuilds COCO from the
    rows, byte-identical, stores the fragments, and the run after that is a no-op again."""
    root = _folder(tmp_path, 12)
    _run(root)
    coco = root / "labels" / "annotations.json"
    expected = coco.read_bytes()
    db = sqlite3.connect(root / "labels" / ".annotator" / "ledger.sqlite")
    with db:
        db.execute("UPDATE items SET coco_json = NULL, coco_key = NULL")
        db.execute("DELETE FROM meta WHERE key LIKE 'built:%'")
    db.close()
    coco.unlink()
    _run(root)
    assert coco.read_bytes() == expected
    db = sqlite3.connect(root / "labels" / ".annotator" / "ledger.sqlite")
    assert db.execute("SELECT count(*) FROM items WHERE coco_json IS NULL").fetchone()[0] == 0
    db.close()
    before = _outputs(root / "labels")
    _run(root)
    assert _outputs(root / "labels") == before
