"""SIGTERM / SIGINT to a real ``annotator annotate --engine ray`` process end it as they end a local run.

Before: ``ray.init`` replaced the CLI's SIGTERM handler with Ray's (a Python one that exits 15 or 1, and its
core worker's C handler that prints "SIGTERM received" and aborts: exit 134), so a scheduler's stop ended a Ray
run with ``Aborted`` or with no line at all. Now (``annotator/interrupt.py``, ``pipelines/ray_session.py``): one
line, exit 143 (SIGTERM) / 130 (SIGINT), no traceback, and the same command resumes to the outputs of an
uninterrupted run. Each case is one interrupted Ray run and its resume, on a local Ray (slow to start here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_incremental import tree_bytes, write_images

pytestmark = pytest.mark.slow

N_IMAGES = 6
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("raysig") / "images"
    write_images(d, list(range(30, 30 + N_IMAGES)))
    return d


def _cmd(images: Path, out: Path, det: Path, sam: Path, engine: str) -> list[str]:
    return [
        sys.executable, "-m", "annotator", "annotate", str(images), "--det-model", str(det), "--sam-model", str(sam),
        "--device", "cpu", "--output-dir", str(out), "--format", "both", "--sam-min-score", "0", "--batch-size", "1",
        "--engine", engine, "--quiet",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory, shapes_detector, sam2_t_ckpt) -> dict[str, bytes]:
    """The uninterrupted run's outputs (local engine: the Ray engine writes the same bytes, test_ray_engine.py)."""
    out = tmp_path_factory.mktemp("raysig_ref") / "labels"
    p = subprocess.run(_cmd(images, out, shapes_detector, sam2_t_ckpt, "local"), capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return tree_bytes(out)


def _started(out: Path, moment: str) -> bool:
    if moment == "ray-starting":  # the run has planned its work (ledger written) and is starting Ray
        return (out / ".annotator" / "ledger.sqlite").is_file()
    return any(p.suffix == ".txt" for p in out.rglob("*.txt"))  # a first result written


@pytest.mark.parametrize(
    ("sig", "moment", "to_group"),
    [(signal.SIGTERM, "ray-starting", False), (signal.SIGTERM, "first-label", False), (signal.SIGINT, "first-label", True)],
    ids=["SIGTERM-while-ray-starts", "SIGTERM-after-first-label", "SIGINT-group-after-first-label"],
)  # fmt: skip
def test_ray_run_stops_with_our_line_and_resumes(images, tmp_path, reference, shapes_detector, sam2_t_ckpt, sig,
                                                  moment, to_group):  # fmt: skip
    out = tmp_path / "labels"
    cmd = _cmd(images, out, shapes_detector, sam2_t_ckpt, "ray")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    t0 = time.monotonic()
    try:
        while p.poll() is None and not _started(out, moment):
            time.sleep(0.05)
            assert time.monotonic() - t0 < 600, f"no {moment} in 600 s"
        if moment == "ray-starting":
            time.sleep(3.0)  # inside ray.init / the actors' start-up on this machine
        assert p.poll() is None, "the run finished before the signal: the test would prove nothing"
        (os.killpg if to_group else os.kill)(p.pid, sig)
        _, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == (143 if sig == signal.SIGTERM else 130), err
    lines = err.strip().splitlines()
    assert f"annotator: interrupted by {sig.name}" in lines[-1] and "run the same command to resume" in lines[-1], err
    for bad in ("Traceback", "Aborted", "SIGTERM received", "Exception ignored"):
        assert bad not in err, err
    assert not [q for q in out.rglob("*") if q.name.endswith(".tmp")]
    p2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p2.returncode == 0, p2.stderr
    assert tree_bytes(out) == reference


@pytest.mark.parametrize("code", [signal.SIGTERM, 1])
def test_ray_sigterm_exit_inside_ray_init_becomes_our_stop(code):
    """A SIGTERM that lands inside ``ray.init`` meets Ray's own Python handlers (``sys.exit(15)``, or the local
    node's ``sys.exit(1)`` after killing its processes): under a run's handler that is our stop, and the run's
    handler is back in place afterwards; without one (a library caller) Ray's exit goes through."""
    from annotator import interrupt
    from pipelines.ray_session import _init

    class FakeRay:
        shutdowns = 0

        def init(self, **kwargs):
            signal.signal(signal.SIGTERM, lambda *a: None)  # what ray.init does to the handler
            raise SystemExit(code)

        def shutdown(self):
            FakeRay.shutdowns += 1

    def ours(signum, frame):
        raise AssertionError("not called")

    old = interrupt.install_handler(ours)
    try:
        with pytest.raises(interrupt.Interrupted, match="SIGTERM"):
            _init(FakeRay(), {})
        assert signal.getsignal(signal.SIGTERM) is ours and interrupt.requested() == "SIGTERM"
    finally:
        interrupt.clear()
        interrupt.restore_handlers(old)
    try:
        with pytest.raises(SystemExit):
            _init(FakeRay(), {})
        assert signal.getsignal(signal.SIGTERM) is not ours  # no run: nothing of ours to put back
    finally:
        signal.signal(signal.SIGTERM, old[signal.SIGTERM])
    assert FakeRay.shutdowns == 2
