"""Durability per batch (issue 19 item 1): ``kill -9`` *inside* a batch -- some of its label files renamed into
place, none of its ledger rows committed -- and the next run ends with exactly the outputs of an uninterrupted
run. Real processes, the real engine and ``api.run``, the latency-0 stand-in models of ``benchmarks/overlap.py``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from benchmarks.scale import write_images

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from annotator.api import run
    from annotator.config import make_config
    from annotator.stages import Stages
    from benchmarks.overlap import FixedLatencyDetector, FixedLatencySegmenter

    root, kill = Path(sys.argv[1]), sys.argv[2] == "kill"
    if kill:  # die after renaming half of the first multi-file batch, before its ledger transaction
        import annotator.output as output
        real = output.commit_staged

        def commit_then_die(staged):
            if len(staged) < 4:
                return real(staged)
            real(staged[: len(staged) // 2])
            with open(root / "killed_after", "w") as f:
                f.write("\\n".join(str(t) for _, t in staged[: len(staged) // 2]))
            os.kill(os.getpid(), signal.SIGKILL)

        output.commit_staged = commit_then_die
    cfg = make_config(data=root / "images", det_model=str(root / "det.pt"), sam_model=str(root / "sam2_t.pt"),
                      output_dir=root / "labels", device="cpu", format="both", save_conf=True, batch_size=8,
                      workers=1)
    stages = Stages(FixedLatencyDetector(0.0, 2, imgsz=64), FixedLatencySegmenter(0.0),
                    Stages.build_polygonizer(cfg), det_batch=8)
    s = run(cfg, engine_options={"stages": stages})
    assert s.failed == 0
    """
)


def _folder(root: Path, n: int) -> Path:
    write_images(root / "images", 0, n)
    for name in ("det.pt", "sam2_t.pt"):
        (root / name).write_bytes(b"stand-in " + name.encode())
    return root


def _child(root: Path, mode: str) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-c", _CHILD, str(root), mode], env=env, timeout=300).returncode


def _tree(out: Path) -> dict[str, str]:
    """Every output file's text (the run root replaced by ROOT), but the run report and the ledger folder."""
    found = {}
    for p in out.rglob("*"):
        if p.is_file() and ".annotator" not in p.parts and p.name != "run_report.json":
            found[p.relative_to(out).as_posix()] = p.read_text().replace(str(out.parent), "ROOT")
    return found


def test_kill_inside_a_batch_then_resume_equals_an_uninterrupted_run(tmp_path):
    n = 120
    ref = _folder(tmp_path / "ref", n)
    assert _child(ref, "plain") == 0
    run = _folder(tmp_path / "run", n)
    assert _child(run, "kill") == -signal.SIGKILL, "no batch of 4+ files was written: the test proves nothing"
    renamed = (run / "killed_after").read_text().split("\n")
    (run / "killed_after").unlink()
    assert renamed and all(Path(p).is_file() for p in renamed)
    db = sqlite3.connect(run / "labels" / ".annotator" / "ledger.sqlite")
    in_ledger = {r[0] for r in db.execute("SELECT rel_path FROM items")}
    db.close()
    orphans = [p for p in renamed if Path(p).name.replace(".txt", ".jpg") not in in_ledger]
    assert orphans == renamed, "a renamed label file of the killed batch already had its ledger row"
    assert _child(run, "plain") == 0
    assert not list((run / "labels").rglob(".annotator-*.tmp"))
    assert _tree(run / "labels") == _tree(ref / "labels")
    db = sqlite3.connect(run / "labels" / ".annotator" / "ledger.sqlite")
    assert db.execute("SELECT count(*) FROM items WHERE status = 'ok'").fetchone()[0] == n
    db.close()
