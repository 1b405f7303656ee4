"""Read one input safely and decode it exactly as Ultralytics does, refusing bad files with a reason.

* Reading (:func:`read_image_bytes`) never blocks: files are opened ``O_NONBLOCK`` and ``fstat``-checked (a
  named pipe, socket or device is refused), and reads are bounded (:func:`max_file_bytes`).
* Pixels equal ``ultralytics.utils.patches.imread(path)`` (``cv2.imdecode(bytes, cv2.IMREAD_COLOR)``, which
  applies EXIF orientation and converts grayscale / alpha / palette / 16-bit to 8-bit BGR; TIFF pages through
  ``cv2.imdecodemulti``; AVIF / HEIC through PIL), so labels match what Ultralytics sees.
* The pixel count is read from the header (PIL, lazy) before any decoding: oversized images cost nothing.
* Where OpenCV cannot decode a file (32-bit integer / float TIFF, CMYK JPEG 2000, ...) PIL decodes it
  (``ImageOps.exif_transpose`` + ``convert("RGB")``); Ultralytics skips such files.
* Every refusal is an :class:`ImageDecodeError` carrying an :class:`~annotator.records.ImageStatus` and a
  one-line reason; callers record it and go on with the next image.

Example:
    >>> import tempfile, cv2, numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "a.png"
    >>> _ = cv2.imwrite(str(path), np.zeros((8, 12, 3), np.uint8))
    >>> load_image(SourceItem(path, "a.png")).image_hw
    (8, 12)
"""

from __future__ import annotations

import contextvars
import io
import os
import stat
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from annotator.records import DecodedImage, ImageStatus, SourceItem
from annotator.validation.files import special_kind as _kind_of  # one definition of 'not a regular file'

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".avif", ".bmp", ".dng", ".heic", ".heif", ".jp2", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"}
)
"""Lower-case suffixes read as images: the same set as ``ultralytics.data.utils.IMG_FORMATS`` (tested)."""


def _looked_for() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))


_TIFF_SUFFIXES = (".tif", ".tiff")
_PIL_FIRST_SUFFIXES = (".avif", ".heic", ".heif")  # Ultralytics' PIL_FALLBACK_SUFFIXES: PIL decodes these first

# (magic bytes at offset 0, format name, whether OpenCV/PIL here can normally decode it)
_MAGIC: tuple[tuple[bytes, str, bool], ...] = (
    (b"\xff\xd8\xff", "JPEG", True),
    (b"\x89PNG\r\n\x1a\n", "PNG", True),
    (b"II*\x00", "TIFF", True),
    (b"MM\x00*", "TIFF", True),
    (b"BM", "BMP", True),
    (b"GIF8", "GIF", True),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000", True),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream", True),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL", False),
    (b"\xff\x0a", "JPEG XL codestream", False),
    (b"8BPS", "Photoshop PSD", False),
    (b"%PDF", "PDF", False),
)
_FTYP_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}



class ImageDecodeError(Exception):
    """An input image that cannot be used; ``status`` says which kind of failure, ``reason`` says why.

    Example:
        >>> err = ImageDecodeError(ImageStatus.TOO_SMALL, "1x1 px, below min_side_px=2")
        >>> err.status.value, str(err)
        ('too_small', 'too_small: 1x1 px, below min_side_px=2')
    """

    def __init__(self, status: ImageStatus, reason: str):
        super().__init__(f"{status.value}: {reason}")
        self.status = status
        self.reason = reason

    def __reduce__(self):  # picklable (Ray, multiprocessing) despite the two-argument constructor
        return type(self), (self.status, self.reason)


#: the largest input file read: no image format needs more per pixel than this for max_pixels pixels.
MAX_FILE_BYTES_PER_PIXEL = 16


def max_file_bytes(max_pixels: int) -> int:
    """The most bytes read from one input: 16 bytes per allowed pixel (16-bit RGBA, uncompressed), >= 1 MiB."""
    return max(1 << 20, MAX_FILE_BYTES_PER_PIXEL * int(max_pixels))


def read_image_bytes(item: SourceItem, *, max_bytes: int | None = None) -> bytes:
    """The raw bytes of ``item.path`` (the file is never modified), never blocking on a special file.

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor: a named pipe,
    socket or device (also one swapped in after the scan, or reached through a link) is refused without a
    blocking read. At most ``max_bytes`` are read.

    Raises:
        ImageDecodeError: ``FAILED`` when the file cannot be read (vanished, permissions, ...), ``UNSUPPORTED``
            when it is not a regular file, ``TOO_LARGE`` when it holds more than ``max_bytes``.
    """
    try:
        fd = os.open(item.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageDecodeError(
            ImageStatus.FAILED, f"cannot read {item.rel_path} ({type(exc).__name__}: {exc.strerror or exc})"
        ) from exc
    try:
        st = os.fstat(fd)
        kind = _kind_of(st.st_mode)
        if kind is not None:
            raise ImageDecodeError(ImageStatus.UNSUPPORTED, f"{kind}, not a regular file: not read")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ImageDecodeError(
                ImageStatus.TOO_LARGE, f"file of {st.st_size:,} bytes exceeds {max_bytes:,} (16 bytes per max_pixels)"
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:  # it grew while being read
            raise ImageDecodeError(ImageStatus.TOO_LARGE, f"file grew past {max_bytes:,} bytes while being read")
        return data
    except OSError as exc:
        raise ImageDecodeError(
            ImageStatus.FAILED, f"cannot read {item.rel_path} ({type(exc).__name__}: {exc.strerror or exc})"
        ) from exc
    finally:
        os.close(fd)


def _sniff_format(data: bytes) -> tuple[str, bool] | None:
    """``(format name, decodable here)`` from the magic bytes, or None when nothing matches."""
    for magic, name, decodable in _MAGIC:
        if data.startswith(magic):
            return name, decodable
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP", True
    if data[4:8] == b"ftyp":
        brand = _FTYP_BRANDS.get(data[8:12])
        if brand:
            return brand, brand == "AVIF" or _heif_plugin_available()
    return None


_heif_registered: bool | None = None


def _heif_plugin_available() -> bool:
    """Register pi-heif's PIL opener once if the package is installed (never installs it)."""
    global _heif_registered
    if _heif_registered is None:
        try:
            from pi_heif import register_heif_opener  # type: ignore[import-not-found]

            register_heif_opener()
            _heif_registered = True
        except ImportError:
            _heif_registered = False
    return _heif_registered


#: the caller's max_pixels while :func:`decode_image_bytes` runs (PIL's own limit must not be stricter)
_MAX_PIXELS: contextvars.ContextVar[int | None] = contextvars.ContextVar("annotator_max_pixels", default=None)
_PIL_LIMIT_LOCK = threading.Lock()


def _pil_open(data: bytes) -> Image.Image:
    """``PIL.Image.open`` on bytes, bypassing Ultralytics' monkey-patch (which pip-installs pi-heif when PIL
    cannot identify a file) if Ultralytics was imported in this process.

    ``max_pixels`` is the single source of truth: when the caller's limit is above PIL's
    ``MAX_IMAGE_PIXELS`` (decompression-bomb check, ~179 MP), PIL's limit is raised to it for this open only
    (the check runs inside ``open``), under a lock, and put back.
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    open_ = getattr(patches, "_image_open", None) or Image.open
    ours = _MAX_PIXELS.get()
    theirs = Image.MAX_IMAGE_PIXELS
    if ours is None or theirs is None or ours <= theirs:
        return open_(io.BytesIO(data))
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = ours
        try:
            return open_(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _header_info(data: bytes) -> tuple[int, int] | None:
    """``(H, W)`` from the header, or None when PIL cannot parse it (OpenCV still gets a try).

    Raises ``TOO_LARGE`` when PIL itself refuses the size (``DecompressionBombError``).
    """
    try:
        with _pil_open(data) as im:
            w, h = im.size
            return int(h), int(w)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            ImageStatus.TOO_LARGE,
            f"refused from the header by PIL ({exc})",
        ) from exc
    except Exception:  # noqa: BLE001 - unknown or corrupt header
        return None


def _decode_pil_bgr(data: bytes) -> np.ndarray:
    """Ultralytics' PIL path (``_imread_pil``): EXIF-upright, ``convert("RGB")``, then BGR."""
    with _pil_open(data) as im:
        upright = ImageOps.exif_transpose(im)
        rgb = np.asarray(upright.convert("RGB"))
    return np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _decode_like_ultralytics(buf: np.ndarray, suffix: str) -> np.ndarray | None:
    """Mirror of ``ultralytics.utils.patches.imread(path, cv2.IMREAD_COLOR)`` on in-memory bytes.

    One difference: a TIFF page is taken from ``imdecodemulti`` only when it has 3 or 4 channels of 8 or 16
    bits (Ultralytics would pass a 2-channel or float page through and break later); other TIFFs go through
    ``cv2.imdecode(IMREAD_COLOR)`` like every other format. Note that this TIFF path ignores EXIF orientation,
    as in Ultralytics.
    """
    im = None
    if suffix in _TIFF_SUFFIXES:
        try:
            success, frames = cv2.imdecodemulti(buf, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            success, frames = False, []
        if success and frames and frames[0].ndim == 3 and frames[0].shape[2] in (3, 4):
            if frames[0].dtype in (np.uint8, np.uint16):
                im = frames[0][..., :3]  # first page, BGR, alpha dropped
    if im is None and suffix in _PIL_FIRST_SUFFIXES:
        try:
            im = _decode_pil_bgr(buf.tobytes())
        except Exception:  # noqa: BLE001 - falls through to OpenCV, as in Ultralytics
            im = None
    if im is None:
        try:
            im = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        except cv2.error:
            im = None
    if im is not None and im.dtype == np.uint16:
        im = (im >> 8).astype(np.uint8)
    return im


def decode_image_bytes(
    data: bytes, item: SourceItem, *, max_pixels: int = 100_000_000, min_side_px: int = 2
) -> DecodedImage:
    """Decode file bytes to an ``(H, W, 3)`` uint8 BGR image, EXIF-upright, exactly as Ultralytics reads it.

    Args:
        data: the file's bytes (see :func:`read_image_bytes`).
        item: the source, for the suffix (TIFF / AVIF / HEIC paths) and for the result.
        max_pixels: refuse images with more pixels (``H * W``), read from the header before decoding.
        min_side_px: refuse images whose height or width is smaller.

    Returns:
        :class:`~annotator.records.DecodedImage`.

    Raises:
        ImageDecodeError: ``DECODE_ERROR`` (empty, truncated, corrupt, not image data), ``UNSUPPORTED`` (suffix
            not read, or a format recognised but not decodable here), ``TOO_LARGE``, ``TOO_SMALL``.

    Example:
        >>> ok, png = cv2.imencode(".png", np.full((3, 5), 7, np.uint8))  # grayscale file
        >>> img = decode_image_bytes(png.tobytes(), SourceItem(Path("/x/g.png"), "g.png"))
        >>> img.image_bgr.shape, img.image_bgr.dtype, int(img.image_bgr[0, 0, 2])
        ((3, 5, 3), dtype('uint8'), 7)
    """
    if max_pixels < 1 or min_side_px < 1:
        raise ValueError(f"max_pixels and min_side_px must be >= 1, got {max_pixels} and {min_side_px}")
    token = _MAX_PIXELS.set(int(max_pixels))
    try:
        return _decode_image_bytes(data, item, max_pixels, min_side_px)
    finally:
        _MAX_PIXELS.reset(token)


def _decode_image_bytes(data: bytes, item: SourceItem, max_pixels: int, min_side_px: int) -> DecodedImage:
    suffix = Path(item.rel_path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageDecodeError(ImageStatus.UNSUPPORTED, f"suffix {suffix or '(none)'!r} is not one of {_looked_for()}")
    if len(data) == 0:
        raise ImageDecodeError(ImageStatus.DECODE_ERROR, "file is empty (0 bytes)")

    sniffed = _sniff_format(data)
    if sniffed is not None and not sniffed[1]:
        hint = " (install pi-heif to read HEIC/HEIF)" if sniffed[0] in ("HEIC", "HEIF") else ""
        raise ImageDecodeError(ImageStatus.UNSUPPORTED, f"{sniffed[0]} data is not decodable here{hint}")

    header = _header_info(data)
    if header is not None:
        h, w = header
        if h * w > max_pixels:
            raise ImageDecodeError(
                ImageStatus.TOO_LARGE, f"{h}x{w} px = {h * w:,} px (from the header) exceeds max_pixels={max_pixels:,}"
            )

    buf = np.frombuffer(data, dtype=np.uint8)
    image = _decode_like_ultralytics(buf, suffix)
    if image is None:
        try:
            image = _decode_pil_bgr(data)  # OpenCV failed: exotic modes (float TIFF, CMYK JPEG 2000, ...)
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(ImageStatus.TOO_LARGE, f"refused by PIL while decoding ({exc})") from exc
        except Exception as exc:  # noqa: BLE001
            what = sniffed[0] if sniffed else None
            if what is None:
                start = data[:12]
                reason = f"not image data (no known image signature; starts with {start!r})"
            else:
                detail = " ".join(str(exc).split())  # one line
                reason = f"truncated or corrupt {what} data (OpenCV failed; PIL: {type(exc).__name__}: {detail})"
            raise ImageDecodeError(ImageStatus.DECODE_ERROR, reason) from exc

    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageDecodeError(
            ImageStatus.DECODE_ERROR, f"decoded to shape {image.shape} {image.dtype}, expected (H, W, 3) uint8"
        )
    h, w = image.shape[:2]
    if h * w > max_pixels:
        raise ImageDecodeError(ImageStatus.TOO_LARGE, f"{h}x{w} px exceeds max_pixels={max_pixels:,}")
    if min(h, w) < min_side_px:
        raise ImageDecodeError(ImageStatus.TOO_SMALL, f"{h}x{w} px: a side is below min_side_px={min_side_px}")
    return DecodedImage(item=item, image_bgr=np.ascontiguousarray(image))


def load_image(item: SourceItem, *, max_pixels: int = 100_000_000, min_side_px: int = 2) -> DecodedImage:
    """Read and decode one item: ``decode_image_bytes(read_image_bytes(item), item, ...)``."""
    data = read_image_bytes(item, max_bytes=max_file_bytes(max_pixels))
    return decode_image_bytes(data, item, max_pixels=max_pixels, min_side_px=min_side_px)
