"""Read a video file as a stream of frames with OpenCV: one frame in memory at a time, never all of them.

* Only regular files are opened (a FIFO or device named ``x.mp4`` is refused before OpenCV sees it); a zero-byte
  file is refused without opening it, and so is a still image given a video suffix (a PNG renamed ``.mp4``, which
  FFmpeg would otherwise read as a one-frame video): its first bytes are an image signature.
* FFmpeg open/read timeouts (:data:`OPEN_TIMEOUT_MS`, :data:`READ_TIMEOUT_MS`) bound a stalled read, so a bad file
  never hangs the run.
* Rotation metadata is honoured: ``CAP_PROP_ORIENTATION_AUTO`` is switched on, so frames come upright (a phone
  video recorded in portrait decodes as ``(H > W)``), as players show them.
* Frames are numbered in source order from 0 (``frame_index``); with ``frame_stride`` n only indices 0, n, 2n...
  are returned (the others are grabbed, not decoded into BGR).

Example:
    >>> import tempfile, cv2, numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "a.avi"
    >>> w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    >>> for i in range(5): _ = w.write(np.full((24, 32, 3), 40 * i, np.uint8))
    >>> w.release()
    >>> with VideoStream(path) as video:
    ...     [(i, f.shape) for i, f in video.frames(frame_stride=2)], video.frames_read, video.declared_frames
    ([(0, (24, 32, 3)), (2, (24, 32, 3)), (4, (24, 32, 3))], 5, 5)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np

#: video file suffixes found in ``data`` beside images (case-insensitive)
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})
OPEN_TIMEOUT_MS = 20_000
READ_TIMEOUT_MS = 20_000


#: first bytes of still-image formats FFmpeg would open as a one-frame "video" (WebP: ``RIFF....WEBP``)
_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)  # fmt: skip


def image_signature(head: bytes) -> str | None:
    r"""The still-image format whose signature ``head`` (a file's first 16 bytes) starts with, or None.

    Example:
        >>> image_signature(b"\x89PNG\r\n\x1a\n\x00"), image_signature(b"\x00\x00\x00\x18ftypmp42")
        ('PNG', None)
    """
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for sig, name in _IMAGE_SIGNATURES if head.startswith(sig)), None)


class VideoDecodeError(Exception):
    """A video that can not be read; the message is one line saying why (the run goes on with the others)."""


def is_video_path(path: str | Path) -> bool:
    """True when the file name has a video suffix (case-insensitive).

    Example:
        >>> is_video_path("clips/A.MP4"), is_video_path("a.jpg")
        (True, False)
    """
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


class VideoStream:
    """One opened video; iterate :meth:`frames` once. Use as a context manager (the capture is released).

    Attributes (after opening):
        declared_frames: the frame count the container declares (``-1`` when unknown; may be approximate).
        fps: declared frames per second (``0.0`` when unknown).
        frames_read: source frames read so far (decoded or grabbed).

    Raises:
        VideoDecodeError: on open: not a regular file, empty, or OpenCV can not open it as a video.
    """

    def __init__(self, path: str | Path) -> None:
        import cv2

        self.path = Path(path)
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise VideoDecodeError(f"cannot stat ({type(e).__name__}: {e.strerror or e})") from None
        if not stat.S_ISREG(st.st_mode):
            raise VideoDecodeError("not a regular file: skipped (never opened)")
        if st.st_size == 0:
            raise VideoDecodeError("empty file (0 bytes)")
        try:
            with open(self.path, "rb") as f:
                kind = image_signature(f.read(16))
        except OSError as e:
            raise VideoDecodeError(f"cannot read ({type(e).__name__}: {e.strerror or e})") from None
        if kind is not None:
            raise VideoDecodeError(f"a {kind} image, not a video (its suffix says video): rename it to its image suffix")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, params)
        if not self._cap.isOpened():
            self._cap.release()
            raise VideoDecodeError(
                "OpenCV (FFmpeg) cannot open it as a video: not a video, truncated or damaged, or an unsupported codec"
            )
        self._cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # frames upright, as players show them
        n = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared_frames = int(n) if n and n > 0 else -1
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else 0.0
        self.frames_read = 0

    def frames(self, frame_stride: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """``(frame_index, frame_bgr)`` for every ``frame_stride``-th source frame, ``(H, W, 3)`` uint8 BGR.

        Stops at the end of the stream or at the first frame that can not be read (compare
        :attr:`frames_read` with :attr:`declared_frames` to tell a truncated file).
        """
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        while True:
            index = self.frames_read
            if index % frame_stride == 0:
                ok, frame = self._cap.read()
            else:
                ok, frame = self._cap.grab(), None
            if not ok:
                return
            self.frames_read += 1
            if frame is not None:
                if frame.ndim == 2:  # some codecs decode grey
                    frame = np.repeat(frame[:, :, None], 3, axis=2)
                yield index, frame

    def truncated(self) -> bool:
        """True when reading stopped clearly before the declared frame count (a cut or damaged file)."""
        return self.declared_frames > 0 and self.frames_read < self.declared_frames - max(2, self.declared_frames // 100)

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
