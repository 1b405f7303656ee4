"""Inputs are sacred: every alias of an input (links, chains of links, ``..`` after a link, the same folder
twice, a bind mount) is refused in one line with exit 2, and every input file keeps its bytes and its inode.

* the real CLI (``python -m annotator annotate|export|review|eval``) on planted aliases: exit 2, one line,
  the input tree byte- and inode-identical, nothing created in it;
* the write layer alone (:func:`annotator.path_guard.check_write` under :func:`protect`): creates, replaces,
  deletes into an input tree or outside the output are refused, whatever the spelling; a real run whose
  layout check is switched off is still stopped by it before any input changes;
* ``export`` / ``review`` / ``eval`` refuse a folder whose ``annotate`` run holds the lock (a real process).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from annotator import path_guard
from annotator.errors import ConfigError
from annotator.io_atomic import atomic_symlink, atomic_write_text, ensure_real_dir, remove_file, temp_path_in
from annotator.path_guard import UnsafePathError, check_write, is_within, protect, same_path, write_allowed
from tests.test_output_safety import REPO, cli, one_line_error


# ------------------------------------------------------------------------------------------------ helpers
def make_dataset(root: Path) -> Path:
    """``root/X``: ``images/{a,sub/b}.png`` (64 x 64), ``labels/{a,sub/b}.txt`` (boxes), ``gt.json``."""
    x = root / "X"
    rng = np.random.default_rng(0)
    for rel in ("a", "sub/b"):
        img = x / "images" / f"{rel}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        lab = x / "labels" / f"{rel}.txt"
        lab.parent.mkdir(parents=True, exist_ok=True)
        lab.write_text("0 0.5 0.5 0.4 0.4\n")
    (x / "gt.json").write_text('{"images": [], "annotations": [], "categories": []}\n')
    return x


def tree_state(root: Path) -> dict[str, tuple]:
    """rel -> (kind, bytes or link target, inode) of everything under ``root`` (links not followed)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_ino)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", p.read_bytes(), st.st_ino)
            else:
                out[rel] = ("dir", None, st.st_ino)
    return out


def link(at: Path, to: Path) -> Path:
    at.symlink_to(to, target_is_directory=to.is_dir())
    return at


def annotate(data, out, det, sam, *extra) -> list:
    return ["annotate", data, "--det-model", det, "--sam-model", sam, "--device", "cpu", "--quiet",
            *(["--output-dir", out] if out is not None else []), *extra]  # fmt: skip


# ------------------------------------------------------------------------------------------------ the CLI, aliases
# each case: (name, build(tmp, X) -> (data, output_dir, extra args), what the one line must say)
def _out_link(t, x):
    return x / "images", link(t / "L", x), ()


def _data_link(t, x):
    return link(t / "D", x / "images"), x, ()


def _chain(t, x):
    return x / "images", link(t / "L1", link(t / "L2", link(t / "L3", x))), ()


def _dotdot(t, x):  # 'Lsub/..' is X/images for the OS (the link's target's parent), not t
    return x / "images", Path(f"{link(t / 'Lsub', x / 'images' / 'sub')}/.."), ()


def _dotdot_data(t, x):
    return Path(f"{link(t / 'Lsub', x / 'images' / 'sub')}/.."), x, ()


def _same_twice(t, x):
    return x / "images", x / "images", ()


def _same_twice_link(t, x):
    return x / "images", link(t / "D", x / "images"), ()


def _output_in_data_via_link(t, x):
    return x / "images", link(t / "D", x / "images") / "out", ()


def _prompt_labels_link(t, x):  # the user's boxes through a link to the output's labels folder
    return x / "images", x / "labels", ("--prompts", "boxes", "--prompt-labels", link(t / "P", x / "labels"))


def _prompt_labels_output_link(t, x):
    return x / "images", link(t / "O", x / "labels"), ("--prompts", "boxes", "--prompt-labels", x / "labels")


def _prompt_points_is_data_yaml(t, x):  # the user's points file is named data.yaml; the output links to its folder
    pts = x / "points" / "data.yaml"
    pts.parent.mkdir()
    pts.write_text('{"a.png": {"points": [[8, 8]], "labels": [1]}}\n')
    return x / "images", link(t / "O", x / "points"), ("--prompts", "points", "--prompt-points", pts)


ALIASES = [
    ("output is a link to X", _out_link, "lies in"),
    ("data is a link to X/images, output X", _data_link, "lies in"),
    ("output is a chain of 3 links to X", _chain, "lies in"),
    ("output 'link/..' is X/images", _dotdot, "inside the input folder"),
    ("data 'link/..' is X/images, output X", _dotdot_data, "lies in"),
    ("the same folder twice", _same_twice, "inside the input folder"),
    ("the same folder twice, once through a link", _same_twice_link, "inside the input folder"),
    ("output inside data through a link", _output_in_data_via_link, "inside the input folder"),
    ("prompt labels through a link to the output labels", _prompt_labels_link, "would overwrite the prompt labels"),
    ("output through a link to the prompt labels", _prompt_labels_output_link, "would overwrite the prompt labels"),
    ("prompt points are the output's data.yaml", _prompt_points_is_data_yaml, "which is the prompt points"),
]


@pytest.mark.parametrize("build,says", [a[1:] for a in ALIASES], ids=[a[0] for a in ALIASES])
def test_cli_refuses_every_alias_and_inputs_keep_bytes_and_inodes(build, says, tmp_path, shapes_detector, sam2_t_ckpt):
    x = make_dataset(tmp_path)
    data, out, extra = build(tmp_path, x)
    before = tree_state(x)
    p = cli(*annotate(data, out, shapes_detector, sam2_t_ckpt, *extra), timeout=120)
    line = one_line_error(p, 2)
    assert says in line, line
    assert tree_state(x) == before  # bytes, link targets and inodes: nothing replaced, nothing created


def _can_bind_mount(tmp: Path) -> bool:
    a, b = tmp / "probe_a", tmp / "probe_b"
    a.mkdir()
    b.mkdir()
    try:
        ok = subprocess.run(["mount", "--bind", a, b], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    if ok:
        subprocess.run(["umount", b], capture_output=True, timeout=20)
    return ok


def test_bind_mount_alias_is_refused(tmp_path, shapes_detector, sam2_t_ckpt, monkeypatch):
    """A bind mount of X: realpath does not see through it, (st_dev, st_ino) does. Where this machine can not
    bind-mount (no privileges), the same identity comparison is checked with links hidden from realpath."""
    x = make_dataset(tmp_path)
    if not _can_bind_mount(tmp_path):
        _assert_identity_catches_what_realpath_misses(tmp_path, x, monkeypatch)
        return
    m = tmp_path / "M"
    m.mkdir()
    assert subprocess.run(["mount", "--bind", x, m], capture_output=True).returncode == 0
    try:
        before = tree_state(x)
        assert os.path.realpath(m) != os.path.realpath(x) and same_path(m, x)
        line = one_line_error(cli(*annotate(x / "images", m, shapes_detector, sam2_t_ckpt), timeout=120), 2)
        assert "lies in" in line and str(m) in line
        line = one_line_error(cli(*annotate(m / "images", x / "images" / "o", shapes_detector, sam2_t_ckpt)), 2)
        assert "inside the input folder" in line
        assert tree_state(x) == before
    finally:
        subprocess.run(["umount", m], capture_output=True)


def _assert_identity_catches_what_realpath_misses(tmp: Path, x: Path, monkeypatch) -> None:
    alias = link(tmp / "alias", x)
    monkeypatch.setattr(path_guard, "real_path", lambda p: Path(os.path.abspath(os.path.expanduser(os.fspath(p)))))
    assert path_guard.real_path(alias) != path_guard.real_path(x)  # realpath is blind to this alias now
    assert is_within(alias / "images" / "a.png", x / "images") and same_path(alias, x)
    with protect(inputs=[x / "images"], output=tmp / "out"), pytest.raises(UnsafePathError, match="inside the input"):
        check_write(alias / "images" / "a.png", "replace")


def test_identity_catches_what_realpath_misses(tmp_path, monkeypatch):
    _assert_identity_catches_what_realpath_misses(tmp_path, make_dataset(tmp_path), monkeypatch)


# ------------------------------------------------------------------------------------------------ the write layer
@pytest.fixture()
def guarded(tmp_path):
    """X (the input), O (the output), aliases of X/images: a link, a chain, 'link/..'; yields them under protect."""
    x = make_dataset(tmp_path)
    out = tmp_path / "O"
    aliases = [
        link(tmp_path / "L", x) / "images",
        link(tmp_path / "C1", link(tmp_path / "C2", x / "images")),
        Path(f"{link(tmp_path / 'Ls', x / 'images' / 'sub')}/.."),
    ]
    before = tree_state(x)
    with protect(inputs=[x / "images", x / "gt.json"], output=out):
        yield x, out, aliases
    assert tree_state(x) == before


def test_check_write_allows_the_output_and_nothing_without_a_registration(tmp_path):
    x = make_dataset(tmp_path)
    check_write(x / "images" / "a.png", "replace")  # no registration: a plain library call
    with protect(inputs=[x / "images"], output=tmp_path / "O"):
        for op in ("create", "replace", "remove", "mkdir"):
            check_write(tmp_path / "O" / "labels" / "a.txt", op)
        check_write(tmp_path, "mkdir")  # the output folder's own parents
        assert atomic_write_text(tmp_path / "O" / "labels" / "a.txt", "x\n", root=tmp_path / "O")
        assert remove_file(tmp_path / "O" / "labels" / "a.txt")


@pytest.mark.parametrize("op", ["create", "replace", "remove", "mkdir", "remove_tree"])
def test_check_write_refuses_every_op_into_the_input_however_spelled(op, guarded):
    x, _, aliases = guarded
    for base in [x / "images", *aliases]:
        with pytest.raises(UnsafePathError, match="inside the input"):
            check_write(base / "a.png", op)
        with pytest.raises(UnsafePathError, match="inside the input"):
            check_write(base / "sub" / "new.txt", op)
        assert not write_allowed(base / "a.png", op)


def test_writers_refuse_to_touch_the_input_and_leave_it_as_it_was(guarded):
    x, out, aliases = guarded
    for base in aliases:
        with pytest.raises(UnsafePathError):
            atomic_write_text(base / "a.png", "overwritten\n")
        with pytest.raises(UnsafePathError):
            atomic_write_text(base / "new.txt", "created\n")
        with pytest.raises(UnsafePathError):
            atomic_symlink("a.png", base / "a.png")  # what made every image a broken link to itself
        with pytest.raises(UnsafePathError):
            remove_file(base / "a.png")
        with pytest.raises(UnsafePathError):
            temp_path_in(base / "sub")
        with pytest.raises(UnsafePathError):
            ensure_real_dir(base / "new")
    with pytest.raises(UnsafePathError):
        atomic_write_text(x / "gt.json", "{}\n")  # a protected file (ground truth, prompts, weights)
    for op in ("replace", "remove"):
        with pytest.raises(UnsafePathError, match="input file"):
            check_write(x / "gt.json", op)
    assert not list(x.rglob(".annotator-*"))  # no temp file was left in the input


def test_writes_outside_the_output_are_refused(guarded, tmp_path):
    _, out, _ = guarded
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "user.txt").write_text("mine\n")
    with pytest.raises(UnsafePathError, match="outside the output"):
        atomic_write_text(elsewhere / "new.txt", "x\n")
    with pytest.raises(UnsafePathError, match="outside the output"):
        remove_file(elsewhere / "user.txt")
    assert (elsewhere / "user.txt").read_text() == "mine\n" and not (elsewhere / "new.txt").exists()
    out.mkdir()
    link(out / "escape", elsewhere)  # a link inside the output leads out of it: the write resolves outside
    with pytest.raises(UnsafePathError, match="outside the output"):
        check_write(out / "escape" / "user.txt", "replace")


def test_output_holding_the_input_protects_the_input_and_can_not_be_deleted(tmp_path):
    out = tmp_path / "O"
    data = out / "raw"
    make_dataset(data)
    with protect(inputs=[data], output=out):
        check_write(out / "labels" / "a.txt", "create")
        with pytest.raises(UnsafePathError, match="inside the input"):
            check_write(data / "X" / "images" / "a.png", "replace")
        with pytest.raises(UnsafePathError, match="holds the input"):
            check_write(out, "remove_tree")


def test_replacing_a_link_to_an_input_file_replaces_the_link_not_the_file(tmp_path):
    x = make_dataset(tmp_path)
    out = tmp_path / "O"
    out.mkdir()
    link(out / "eval.json", x / "gt.json")
    before = (x / "gt.json").read_bytes(), os.stat(x / "gt.json").st_ino
    with protect(inputs=[x / "gt.json"], output=out):
        atomic_write_text(out / "eval.json", "{}\n", root=out)
    assert ((x / "gt.json").read_bytes(), os.stat(x / "gt.json").st_ino) == before
    assert not (out / "eval.json").is_symlink()


def test_write_layer_stops_a_real_run_whose_layout_check_is_off(tmp_path, shapes_detector, sam2_t_ckpt, monkeypatch):
    """The backstop: with the layout check switched off, the run that destroyed the images (output a link to
    X, data X/images) is stopped by the write layer itself, before any input changes."""
    from annotator import api, config

    x = make_dataset(tmp_path)
    (x / "images" / "sub" / "b.png").unlink()  # one image: the refusal comes at its first image link
    monkeypatch.setattr(config, "check_annotate_paths", lambda cfg: None)
    monkeypatch.setattr(path_guard, "check_annotate_paths", lambda cfg: None)
    cfg = config.make_config(data=x / "images", output_dir=link(tmp_path / "L", x), det_model=str(shapes_detector),
                             sam_model=str(sam2_t_ckpt), device="cpu", sam_min_score=0.0)  # fmt: skip
    before = tree_state(x / "images")
    with pytest.raises(UnsafePathError, match="inside the input") as e:
        api.run(cfg)
    assert isinstance(e.value, ConfigError)
    assert tree_state(x / "images") == before


# ------------------------------------------------------------------------------------------------ export, review, eval
@pytest.fixture(scope="module")
def finished(tmp_path_factory, shapes_detector, sam2_t_ckpt):
    """A finished run: X/images -> O (dataset layout)."""
    t = tmp_path_factory.mktemp("finished")
    x = make_dataset(t)
    (x / "images" / "sub" / "b.png").unlink()  # one image is enough (the folder stays, for the 'sub' aliases)
    out = t / "O"
    p = cli(*annotate(x / "images", out, shapes_detector, sam2_t_ckpt, "--sam-min-score", "0"), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return t, x, out


def _review_cases(t: Path, x: Path, out: Path):
    gt_in_out = out / "eval.json"  # the user's ground truth, reached through a link to the output
    gt_in_out.write_text((x / "gt.json").read_text())
    return [
        (["export", out, "--to", "labelstudio", "--dest", link(t / "Dx", x / "images")], "overlaps the run's input"),
        (["export", out, "--to", "cvat", "--cvat-images", "copy", "--dest", x], "overlaps the run's input"),
        (["export", out, "--to", "cvat", "labelstudio", "--dest", Path(f"{link(t / 'Ds', x / 'images' / 'sub')}/..")],
         "overlaps the run's input"),
        (["review", out, "--dest", link(t / "Dr", x / "images" / "sub") / "page"], "overlaps the run's input"),
        (["review", out, "--dest", out / ".annotator" / "page"], "which the annotate run owns"),
        (["export", out, "--to", "labelstudio", "--dest", link(t / "Di", out / "images")],
         "which the annotate run owns"),
        (["eval", out, "--gt", link(t / "Lo", out) / "eval.json"], "is where eval writes"),
    ]  # fmt: skip


def test_export_review_eval_refuse_destinations_on_inputs(finished):
    t, x, out = finished
    cases = _review_cases(t, x, out)
    def out_state():  # the lock file holds the PID of its last holder: each command takes the lock
        return {k: v for k, v in tree_state(out).items() if k != ".annotator/lock"}

    before, out_before = tree_state(x), out_state()
    for args, says in cases:
        line = one_line_error(cli(*args, timeout=120), 2)
        assert says in line, (args, line)
    assert tree_state(x) == before and out_state() == out_before


# several lines on purpose: the holder's command line must still come out as one line
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from annotator.lock import OutputLock
    lock = OutputLock(Path(sys.argv[1]))
    lock.acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def test_export_review_eval_refuse_a_folder_whose_run_holds_the_lock(finished):
    t, x, out = finished
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_state(out)
        for args in (["export", out, "--to", "labelstudio"], ["review", out], ["eval", out, "--gt", x / "gt.json"]):
            line = one_line_error(cli(*args, timeout=120), 2)
            assert f"output folder {out} is in use: PID {holder.pid}" in line, line
        assert tree_state(out) == before  # nothing read half-way, nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    p = cli("export", out, "--to", "labelstudio", timeout=120)  # the holder is gone: the export runs
    assert p.returncode == 0, p.stderr
    assert (out / "review" / "labelstudio" / "tasks.json").is_file()


def test_a_list_or_one_image_run_exports_into_its_output_beside_the_list(tmp_path):
    """For a ``.txt`` list (or one image) the input is that file, not its folder, which holds the default output
    (``<list>_auto_annotate_labels``): review destinations there are fine; the list itself is not."""
    from annotator.finished import FinishedRun
    from annotator.path_guard import check_review_dest, run_input

    x = make_dataset(tmp_path)
    lst = x / "list.txt"
    lst.write_text("images/a.png\n")
    out = x / "list.txt_auto_annotate_labels"
    run = FinishedRun(out, x, {0: "a"}, {}, {}, {"data": str(lst), "output_dir": str(out)})
    assert run_input(run) == lst
    check_review_dest(run, out / "review" / "cvat")
    with pytest.raises(UnsafePathError, match="overlaps the run's input"):
        check_review_dest(run, link(tmp_path / "Ll", lst))
    with protect(inputs=[run_input(run)], output=[out / "review" / "cvat", out]):
        assert atomic_write_text(out / "review" / "cvat" / "t.json", "[]\n", root=out / "review" / "cvat")
        with pytest.raises(UnsafePathError, match="input file"):
            check_write(lst, "replace")
