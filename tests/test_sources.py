"""Tests for annotator.sources: real files written in tmp_path, no mocks."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from annotator.records import ImageStatus, SourceItem
from annotator.sources import (
    IMAGE_SUFFIXES,
    ImageDecodeError,
    decode_image_bytes,
    load_image,
    read_image_bytes,
    scan_sources,
)

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")


@pytest.fixture(scope="module")
def ultralytics_imread():
    """Ultralytics' own reader, the reference our decoder must match."""
    patches = pytest.importorskip("ultralytics.utils.patches")
    return patches.imread


def _rng_image(hw=(24, 36), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*hw, 3), dtype=np.uint8)


def _write(path: Path, image: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, _rng_image() if image is None else image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _item(path: Path) -> SourceItem:
    return SourceItem(path=path, rel_path=path.name)


def _decode_status(data: bytes, name: str, **limits) -> ImageStatus:
    with pytest.raises(ImageDecodeError) as info:
        decode_image_bytes(data, SourceItem(Path("/nowhere") / name, name), **limits)
    assert info.value.reason  # always says why
    return info.value.status


# ------------------------------------------------------------------------------------------------ scanning


def test_image_suffixes_match_ultralytics():
    utils = pytest.importorskip("ultralytics.data.utils")
    assert IMAGE_SUFFIXES == {f".{s}" for s in utils.IMG_FORMATS}


def test_scan_is_recursive_sorted_and_skips_non_images(tmp_path):
    for rel in ("b.jpg", "a.jpg", "sub/a.jpg", "sub/deeper/c.PNG", "UP.JPEG", "x.Webp"):
        _write(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub" / "labels.json").write_text("{}")
    (tmp_path / ".a.jpg.tmp").write_bytes(b"partial")  # our writers' temp file
    first = scan_sources(tmp_path)
    rels = [it.rel_path for it in first.items]
    assert rels == ["UP.JPEG", "a.jpg", "b.jpg", "sub/a.jpg", "sub/deeper/c.PNG", "x.Webp"]
    assert first.refused == []
    assert rels == [it.rel_path for it in scan_sources(tmp_path).items]  # deterministic
    assert all(it.path.is_absolute() and it.path.is_file() for it in first.items)
    assert first.items[3].path == tmp_path / "sub" / "a.jpg"


def test_symlinks_escaping_root_are_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    _write(root / "a.jpg")
    _write(outside / "secret.jpg")
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "alias.jpg").symlink_to(root / "a.jpg")  # inside: fine
    (root / "broken.jpg").symlink_to(root / "missing.jpg")
    scan = scan_sources(root)
    assert [it.rel_path for it in scan.items] == ["a.jpg", "alias.jpg"]
    refused = dict(scan.refused)
    assert set(refused) == {"broken.jpg", "escape.jpg", "escape_dir"}
    assert "outside the root" in refused["escape.jpg"] and "outside the root" in refused["escape_dir"]


def test_symlink_loop_is_scanned_once(tmp_path):
    _write(tmp_path / "sub" / "a.jpg")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "sub" / "self").symlink_to(tmp_path / "sub" / "self")  # self-loop, no image suffix
    scan = scan_sources(tmp_path)
    assert [it.rel_path for it in scan.items] == ["sub/a.jpg"]
    assert "already scanned" in dict(scan.refused)["sub/loop"]


def test_single_file_and_txt_list_roots(tmp_path):
    _write(tmp_path / "data" / "one.png")
    _write(tmp_path / "data" / "sub" / "two.jpg")
    _write(tmp_path / "elsewhere.jpg")
    single = scan_sources(tmp_path / "data" / "one.png")
    assert [(it.rel_path, it.path) for it in single.items] == [("one.png", tmp_path / "data" / "one.png")]

    listing = tmp_path / "data" / "list.txt"
    lines = ["sub/two.jpg", "", str(tmp_path / "data" / "one.png"), "missing.jpg", "../elsewhere.jpg", "one.png"]
    listing.write_text("\n".join(lines) + "\n")
    scan = scan_sources(listing)
    assert [it.rel_path for it in scan.items] == ["one.png", "sub/two.jpg"]
    assert sorted(dict(scan.refused)) == ["../elsewhere.jpg", "missing.jpg"]


def test_missing_or_empty_root_errors_say_what_was_looked_for(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        scan_sources(tmp_path / "nope")
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match=r"no images found under .*\.jpg"):
        scan_sources(tmp_path)


def test_unicode_and_space_names(tmp_path):
    path = _write(tmp_path / "dossier été" / "ñandú 图 1.jpg")
    scan = scan_sources(tmp_path)
    assert [it.rel_path for it in scan.items] == ["dossier été/ñandú 图 1.jpg"]
    assert load_image(scan.items[0]).image_hw == (24, 36)
    assert path.exists()


# ------------------------------------------------------------------------------------------------ decoding


def test_bad_files_get_a_status(tmp_path):
    ok, jpg = cv2.imencode(".jpg", _rng_image((64, 64)))
    jpg = jpg.tobytes()
    assert _decode_status(b"", "zero.jpg") == ImageStatus.DECODE_ERROR
    assert _decode_status(jpg[: len(jpg) // 2], "truncated.jpg") == ImageStatus.DECODE_ERROR
    assert _decode_status(b"hello, I am text\n" * 10, "text.jpg") == ImageStatus.DECODE_ERROR
    assert _decode_status(jpg, "anim.gif") == ImageStatus.UNSUPPORTED  # suffix we do not read
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    try:
        import pi_heif  # noqa: F401
    except ImportError:
        assert _decode_status(heic, "phone.heic") == ImageStatus.UNSUPPORTED
    ok, tiny = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))
    assert _decode_status(tiny.tobytes(), "tiny.png", min_side_px=2) == ImageStatus.TOO_SMALL
    assert decode_image_bytes(tiny.tobytes(), _item(Path("t.png")), min_side_px=1).image_hw == (1, 1)


def _png_header_only(h: int, w: int) -> bytes:
    """A PNG with a valid IHDR for ``(h, w)`` and no pixel data: only a header-based check can size it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_too_large_is_refused_from_the_header():
    assert _decode_status(_png_header_only(20_000, 10_000), "huge.png") == ImageStatus.TOO_LARGE  # 200 Mpx
    assert _decode_status(_png_header_only(100_000, 100_000), "bomb.png") == ImageStatus.TOO_LARGE  # PIL bomb
    assert _decode_status(_png_header_only(100, 100), "small.png", max_pixels=9_999) == ImageStatus.TOO_LARGE
    # Same header under the limit: now it is decoded, and fails for lack of pixel data.
    assert _decode_status(_png_header_only(100, 100), "small.png") == ImageStatus.DECODE_ERROR


def _mode_images() -> dict[str, bytes]:
    rgb = Image.fromarray(_rng_image((20, 30))[..., ::-1].copy())
    gray16 = Image.fromarray((np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 97))
    return {
        "gray.png": _pil_bytes(rgb.convert("L"), "PNG"),
        "rgba.png": _pil_bytes(rgb.convert("RGBA"), "PNG"),
        "palette.png": _pil_bytes(rgb.convert("P"), "PNG"),
        "gray16.png": _pil_bytes(gray16, "PNG"),
        "rgb16.png": cv2.imencode(".png", _rng_image((20, 30)).astype(np.uint16) * 257)[1].tobytes(),
        "cmyk.jpg": _pil_bytes(rgb.convert("CMYK"), "JPEG", quality=95),
        "rgb.tif": _pil_bytes(rgb, "TIFF"),
        "rgba.webp": _pil_bytes(rgb.convert("RGBA"), "WEBP", lossless=True),
        "gray.bmp": _pil_bytes(rgb.convert("L"), "BMP"),
    }


@pytest.mark.parametrize("name", sorted(_mode_images()))
def test_modes_decode_to_bgr_uint8_like_ultralytics(tmp_path, name, ultralytics_imread):
    path = tmp_path / name
    path.write_bytes(_mode_images()[name])
    before = path.read_bytes()
    image = load_image(_item(path)).image_bgr
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, ultralytics_imread(path))
    assert path.read_bytes() == before  # sources are never modified


def test_16bit_png_keeps_the_high_byte(tmp_path):
    gray16 = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 97).astype(np.uint16)
    data = cv2.imencode(".png", gray16)[1].tobytes()
    image = decode_image_bytes(data, _item(Path("g16.png"))).image_bgr
    np.testing.assert_array_equal(image[..., 0], gray16 >> 8)  # PIL's convert("RGB") would clip to 255


def test_exif_rotated_jpeg_decodes_upright_like_ultralytics(tmp_path, ultralytics_imread):
    stored = _rng_image((20, 40))  # stored landscape, orientation 6 = rotate 90 deg clockwise to view
    pil = Image.fromarray(stored[..., ::-1].copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_pil_bytes(pil, "JPEG", quality=95, exif=exif.tobytes()))
    image = load_image(_item(path)).image_bgr
    assert image.shape == (40, 20, 3)  # upright: portrait
    np.testing.assert_array_equal(image, ultralytics_imread(path))
    plain = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    np.testing.assert_array_equal(image, cv2.rotate(plain, cv2.ROTATE_90_CLOCKWISE))


def test_pil_fallback_when_opencv_cannot_decode(tmp_path, ultralytics_imread):
    values = np.linspace(0, 255, 20 * 30, dtype=np.float32).reshape(20, 30)
    path = tmp_path / "float.tif"
    path.write_bytes(_pil_bytes(Image.fromarray(values, mode="F"), "TIFF"))
    assert cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is None
    assert ultralytics_imread(path) is None  # Ultralytics skips this file
    image = load_image(_item(path)).image_bgr
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    expected = np.asarray(Image.fromarray(values, mode="F").convert("RGB"))[..., ::-1]
    np.testing.assert_array_equal(image, expected)


def test_cmyk_tiff_gets_true_colours(tmp_path, ultralytics_imread):
    bgr = _rng_image((20, 30))
    path = tmp_path / "cmyk.tif"
    path.write_bytes(_pil_bytes(Image.fromarray(bgr[..., ::-1].copy()).convert("CMYK"), "TIFF"))
    image = load_image(_item(path)).image_bgr
    assert np.abs(image.astype(int) - bgr).max() <= 2  # libtiff converts CMYK to BGR(A), not raw channels
    np.testing.assert_array_equal(image, ultralytics_imread(path))


def test_decode_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(ImageDecodeError(ImageStatus.TOO_SMALL, "1x1 px")))
    assert (err.status, err.reason, str(err)) == (ImageStatus.TOO_SMALL, "1x1 px", "too_small: 1x1 px")


def test_read_errors_are_reported(tmp_path):
    with pytest.raises(ImageDecodeError) as info:
        read_image_bytes(_item(tmp_path / "gone.jpg"))
    assert info.value.status == ImageStatus.FAILED and "gone.jpg" in info.value.reason


# ---------------------------------------------------------------------------------------- special files, limits
def _within(seconds: float, fn, *args, **kwargs):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return in time."""
    import concurrent.futures

    ex = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return ex.submit(fn, *args, **kwargs).result(timeout=seconds)
    finally:
        ex.shutdown(wait=False)


def test_special_files_are_refused_without_being_opened(tmp_path):
    import cv2

    from annotator.sources import scan_sources

    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.zeros((20, 20, 3), np.uint8))
    os.mkfifo(d / "b.jpg")  # a named pipe with an image name: opening it for reading would block forever
    (d / "list.txt").write_text("a.png\nb.jpg\n")
    os.mkfifo(tmp_path / "solo.jpg")
    os.mkfifo(tmp_path / "pipe.txt")
    scan = _within(10, scan_sources, d)
    assert [i.rel_path for i in scan.items] == ["a.png"]
    assert scan.refused == [("b.jpg", "a named pipe, not a regular file: skipped (never opened)")]
    scan = _within(10, scan_sources, d / "list.txt")
    assert [i.rel_path for i in scan.items] == ["a.png"] and scan.refused[0][0] == "b.jpg"
    for root in (tmp_path / "solo.jpg", tmp_path / "pipe.txt"):  # as DATA, or as the .txt list itself
        with pytest.raises(ValueError, match="is a named pipe"):
            _within(10, scan_sources, root)


def test_a_special_file_swapped_in_after_the_scan_gets_a_status(tmp_path):
    from annotator.sources import ImageDecodeError, load_image, read_image_bytes, scan_sources

    d = tmp_path / "in"
    d.mkdir()
    (d / "a.png").write_bytes(b"x")
    [item] = scan_sources(d).items
    (d / "a.png").unlink()
    os.mkfifo(d / "a.png")
    with pytest.raises(ImageDecodeError) as e:
        _within(10, read_image_bytes, item)
    assert e.value.status.value == "unsupported" and "named pipe" in e.value.reason
    (d / "a.png").unlink()
    (d / "a.png").symlink_to("/dev/zero")  # a device reached through a link: refused, never read
    with pytest.raises(ImageDecodeError, match="character device"):
        _within(10, load_image, item)


def test_max_pixels_above_pils_own_limit_is_honoured(monkeypatch):
    """max_pixels is the single source of truth: PIL's decompression-bomb limit (here lowered to 1,000 px to
    stand for its ~179 MP default) does not refuse an image that max_pixels allows, and is put back after."""
    import cv2
    from PIL import Image

    from annotator.sources import ImageDecodeError

    ok, png = cv2.imencode(".png", np.zeros((100, 120, 3), np.uint8))
    item = SourceItem(Path("/x/a.png"), "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_image_bytes(png.tobytes(), item, max_pixels=20_000).image_hw == (100, 120)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(ImageDecodeError, match="too_large"):
        decode_image_bytes(png.tobytes(), item, max_pixels=11_000)


def test_cli_run_with_a_named_pipe_in_the_folder_finishes(tmp_path, shapes_detector, sam2_t_ckpt):
    import json
    import subprocess
    import sys

    import cv2

    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.zeros((64, 64, 3), np.uint8))
    os.mkfifo(d / "b.jpg")
    cmd = [sys.executable, "-m", "annotator", "annotate", str(d), "--det-model", str(shapes_detector),
           "--sam-model", str(sam2_t_ckpt), "--device", "cpu", "--output-dir", str(tmp_path / "out"), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["images_seen"] == 1 and summary["refused"][0]["path"] == "b.jpg"
