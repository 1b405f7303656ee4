"""The output folder under faults and hostile states, with real processes and real file systems.

* files get the permissions the umask gives; a no-op re-run touches no output file (bytes and times);
* only our own temp files are cleaned, never a user's, never in the input tree;
* a link inside the output folder is never written through;
* disk full, read-only and immutable outputs stop the run with one line naming the path and the cause and
  exit code 3; the same command resumes to exactly the outputs of an uninterrupted run once fixed;
* input names of the maximum legal length get their labels;
* config-file paths resolve relative to the file; CLI habits (--version, python -m annotator, --classes 0 2 DATA).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_incremental import tree_bytes, write_images

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str | Path, umask: int | None = None, cwd: Path | None = None, timeout: float = 600):
    """``python -m annotator ARGS`` in a fresh process; returns the CompletedProcess (text)."""
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(
        [sys.executable, "-m", "annotator", *map(str, args)], capture_output=True, text=True, timeout=timeout,
        preexec_fn=pre, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def annotate_args(data: Path, out: Path, det: Path, sam: Path, *extra: str) -> list:
    return ["annotate", data, "--det-model", det, "--sam-model", sam, "--device", "cpu", "--output-dir", out,
            "--format", "both", "--save-conf", "--sam-min-score", "0", "--quiet", *extra]  # fmt: skip


def one_line_error(p, code: int) -> str:
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[0]


def snapshot(d: Path) -> dict[str, tuple]:
    """path -> (kind, bytes or link target, mtime_ns, inode) for everything but the run report and .annotator/."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if ".annotator" in p.parts or p.name == "run_report.json":
            continue
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p), st.st_mtime_ns, st.st_ino)
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("file", p.read_bytes(), st.st_mtime_ns, st.st_ino)
        else:
            out[rel] = ("dir", None, None, st.st_ino)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("safety") / "images"
    write_images(d, [31, 32, 33])
    return d


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory, shapes_detector, sam2_t_ckpt) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "out"
    p = cli(*annotate_args(images, out, shapes_detector, sam2_t_ckpt))
    assert p.returncode == 0, p.stderr
    return tree_bytes(out)


# ------------------------------------------------------------------------------------------- permissions, no-op
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_umask_permissions(umask, images, tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    out = tmp_path / "out"
    p = cli(*annotate_args(images, out, random_yolo_ckpt, sam2_t_ckpt), umask=umask)
    assert p.returncode == 0, p.stderr
    files = [q for q in out.rglob("*") if q.is_file() and not q.is_symlink() and not q.name.startswith("ledger")]
    assert len(files) >= 7  # labels, data.yaml, annotations.json, scores.csv, run_report.json, lock
    for q in files:
        assert stat.S_IMODE(q.stat().st_mode) == 0o666 & ~umask, q
    for q in [x for x in out.rglob("*") if x.is_dir() and not x.is_symlink()]:
        assert stat.S_IMODE(q.stat().st_mode) == 0o777 & ~umask, q


def test_noop_rerun_touches_no_output_file(images, tmp_path, shapes_detector, sam2_t_ckpt):
    out = tmp_path / "out"
    assert cli(*annotate_args(images, out, shapes_detector, sam2_t_ckpt)).returncode == 0
    before = snapshot(out)
    assert any(k.endswith("annotations.json") for k in before) and "images/img31.png" in before
    p = cli(*annotate_args(images, out, shapes_detector, sam2_t_ckpt))
    assert p.returncode == 0 and "0 images:" in p.stdout, p.stdout
    assert snapshot(out) == before  # same bytes, same mtimes, same inodes: nothing replaced


# ------------------------------------------------------------------------------------------- temp files, links
def test_cleanup_removes_only_our_temp_files(tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    out = tmp_path / "out"
    data = out / "photos"  # the input tree inside the output folder
    write_images(data, [41])
    (data / ".draft.tmp").write_text("user file in the input tree")
    (data / ".annotator-abcd1234.tmp").write_text("looks like ours, but lies in the input tree")
    (out / "labels").mkdir(parents=True)
    (out / ".notes.tmp").write_text("user file")
    (out / "labels" / ".x.jpg.k2j3h4.tmp").write_text("user file shaped like the old temp names")
    (out / "labels" / ".annotator-zz99xx00.tmp").write_text("a killed run's leftover")
    p = cli(*annotate_args(data, out, random_yolo_ckpt, sam2_t_ckpt))
    assert p.returncode == 0, p.stderr
    assert not (out / "labels" / ".annotator-zz99xx00.tmp").exists()
    for kept in [data / ".draft.tmp", data / ".annotator-abcd1234.tmp", out / ".notes.tmp",
                 out / "labels" / ".x.jpg.k2j3h4.tmp"]:  # fmt: skip
        assert kept.exists(), kept


@pytest.mark.parametrize("linked", ["labels/sub", "images/sub", "labels", ".annotator"])
def test_never_writes_through_a_link_inside_the_output(linked, images, tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    assert cli(*annotate_args(images, out, random_yolo_ckpt, sam2_t_ckpt)).returncode == 0
    elsewhere.mkdir()
    shutil.rmtree(out / linked)
    (out / linked).symlink_to(elsewhere, target_is_directory=True)
    (images / "sub" / "img32.png").touch()  # new mtime: this image is processed again
    try:
        p = cli(*annotate_args(images, out, random_yolo_ckpt, sam2_t_ckpt))
    finally:
        os.utime(images / "sub" / "img32.png")
    line = one_line_error(p, 3)
    assert "symbolic link inside the output folder" in line and linked.split("/")[-1] in line
    assert list(elsewhere.iterdir()) == []  # nothing written through the link


# ------------------------------------------------------------------------------------------- I/O faults
@pytest.fixture()
def tmpfs(tmp_path):
    """A small tmpfs mounted for the test (the CI machine runs as root); unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()}): the disk-full / read-only cases need root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_stops_with_one_line_and_resumes(images, tmpfs, reference, shapes_detector, sam2_t_ckpt):
    out = tmpfs / "out"
    args = annotate_args(images, out, shapes_detector, sam2_t_ckpt)
    filler = tmpfs / "filler"
    with open(filler, "wb") as f:  # leave a few KB: the ledger or the first labels fit, the rest does not
        try:
            f.write(b"\0" * (4 * 1024 * 1024))
        except OSError:
            pass
    os.truncate(filler, os.path.getsize(filler) - 40 * 1024)
    line = one_line_error(cli(*args), 3)
    assert "No space left on device" in line or "disk is full" in line, line
    assert str(out) in line and "run the same command" in line
    filler.unlink()
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    assert tree_bytes(out) == reference and not [q for q in out.rglob("*.tmp")]


def test_read_only_output_stops_with_one_line_and_resumes(images, tmpfs, reference, shapes_detector, sam2_t_ckpt):
    out = tmpfs / "out"
    args = annotate_args(images, out, shapes_detector, sam2_t_ckpt)
    assert cli(*args).returncode == 0
    (images / "img31.png").touch()  # modified: the next run must write
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        line = one_line_error(cli(*args), 3)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    assert "Read-only file system" in line or "read-only" in line, line
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    assert tree_bytes(out) == reference


def test_immutable_labels_folder_stops_with_one_line(images, tmp_path, reference, shapes_detector, sam2_t_ckpt):
    out = tmp_path / "out"
    args = annotate_args(images, out, shapes_detector, sam2_t_ckpt)
    (out / "labels").mkdir(parents=True)
    if subprocess.run(["chattr", "+i", str(out / "labels")], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted on this file system")
    try:
        line = one_line_error(cli(*args), 3)
    finally:
        subprocess.run(["chattr", "-i", str(out / "labels")], check=True)
    assert "Operation not permitted" in line and "labels" in line, line
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    assert tree_bytes(out) == reference


# ------------------------------------------------------------------------------------------- names, configs, CLI
def test_input_names_of_the_maximum_length_get_labels(tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    data = tmp_path / "in"
    write_images(data, [51, 52], sub=False)
    name_max = os.pathconf(data, "PC_NAME_MAX")
    longest = data / ("n" * (name_max - 4) + ".png")
    (data / "img51.png").rename(longest)
    out = tmp_path / "out"
    p = cli(*annotate_args(data, out, random_yolo_ckpt, sam2_t_ckpt), "--json")
    assert p.returncode == 0, p.stderr
    assert (out / "labels" / (longest.stem + ".txt")).is_file() and (out / "images" / longest.name).is_symlink()


def test_config_paths_are_relative_to_the_config_file(tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    job = tmp_path / "job"
    write_images(job / "data", [61], sub=False)
    shutil.copy(random_yolo_ckpt, job / "det.pt")
    (job / "weights").mkdir()
    shutil.copy(sam2_t_ckpt, job / "weights" / "sam2_t.pt")
    (job / "job.yaml").write_text(
        "data: data\noutput_dir: out\ndet_model: det.pt\nsam_model: sam2_t.pt\nweights_dir: weights\ndevice: cpu\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    p = cli("annotate", "--config", job / "job.yaml", "--quiet", cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert (job / "out" / "labels" / "img61.txt").is_file() and not any(elsewhere.iterdir())


def test_cli_habits(images, tmp_path, random_yolo_ckpt, sam2_t_ckpt):
    from annotator import __version__

    for cmd in ([sys.executable, "-m", "annotator", "--version"], ["annotator", "--version"]):
        exe = shutil.which(cmd[0]) or str(Path(sys.executable).parent / cmd[0])
        p = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stdout.strip() == f"annotator {__version__}", (cmd, p.stdout, p.stderr)
    # --classes before DATA does not swallow DATA
    out = tmp_path / "out"
    p = cli("annotate", "--classes", "0", "2", images, "--det-model", random_yolo_ckpt, "--sam-model", sam2_t_ckpt,
            "--device", "cpu", "--output-dir", out, "--quiet")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "3 images:" in p.stdout
    line = one_line_error(cli("annotate", "--classes", "person", images), 2)
    assert "--classes needs at least one integer class id" in line


def test_results_and_progress_come_per_image_chunk_not_per_batch(tmp_path, shapes_detector, sam2_t_ckpt):
    """On CPU the local engine hands the models chunks of as many images as the segmenter computes at once, and
    each chunk is written (the progress bar moves) while the next one runs, not once per batch of 8."""
    from annotator.api import run
    from annotator.config import make_config
    from annotator.models import resolve_models
    from annotator.stages import Stages

    data = tmp_path / "in"
    write_images(data, [71, 72, 73, 74], sub=False)
    cfg = make_config(data=data, det_model=str(shapes_detector), sam_model=str(sam2_t_ckpt), device="cpu",
                      output_dir=tmp_path / "out", batch_size=4, sam_min_score=0.0)  # fmt: skip
    stages = Stages.build(cfg, resolve_models(cfg.det_model, cfg.sam_model))
    stages.segmenter.cpu_workers = 2  # as on a 2-core machine, whatever this one has
    events: list[tuple[str, int]] = []
    infer = stages.infer

    def traced_infer(inputs):
        out = infer(inputs)
        events.append(("infer", len(inputs)))
        return out

    stages.infer = traced_infer
    run(cfg, on_result=lambda r: events.append(("result", 1)), engine_options={"stages": stages})
    assert [n for kind, n in events if kind == "infer"] == [2, 2]  # one batch of 4, in two chunks
    last_infer = max(i for i, (kind, _) in enumerate(events) if kind == "infer")
    assert events.index(("result", 1)) < last_infer  # the first chunk was written while the second one ran
