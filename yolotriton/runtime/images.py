"""Image bytes -> network input: header checks, decode, resize. numpy + OpenCV only.

Copied into the preprocess model of every rendered repository and imported by the in-process
pipeline and tests, so served and local results come from the same code.

Limits are checked from the file header, before any pixel is decoded: OpenCV's own limit is
2^30 pixels, so a small PNG that claims 120 MP would otherwise be decoded in full.

JPEGs are decoded by libjpeg-turbo through simplejpeg into a buffer reused per thread: the same
pixels as cv2.imdecode (tested), but a fresh 1.3 MB output array costs ~0.6 ms of page faults here,
a fifth of the whole decode. PNG/BMP, JPEGs simplejpeg refuses, and every JPEG where simplejpeg is
not installed (e.g. a hand-made offline venv) go through OpenCV: same pixels, slower.
"""
from __future__ import annotations

import struct
import threading
from pathlib import Path

import cv2
import numpy as np

try:
    import simplejpeg
except ImportError:  # the preprocess model logs this once at start-up
    simplejpeg = None

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
LETTERBOX_FILL = 0.5  # darknet's letterbox fills with mid grey (--letterbox-fill changes it)
REUSED_BUFFER_MAX_BYTES = 32 * 1024 * 1024  # larger decodes get a fresh array, so one odd photo can't pin memory

_scratch = threading.local()


class ImageError(ValueError):
    """The bytes or array are not an image this service accepts; the message says why."""

    def in_request(self, index: int, count: int) -> "ImageError":
        """The error as its request reports it: which of the request's `count` images failed, when it has several."""
        return ImageError(f"image {index} of the request: {self}") if count > 1 else self


def image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from a JPEG, PNG or BMP header, without decoding."""
    if len(data) == 0:
        raise ImageError("empty image: 0 bytes")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("truncated PNG: no IHDR header")
        w, h = struct.unpack(">II", data[16:24])
        if b"IEND" not in data[-12:]:
            raise ImageError("truncated PNG: no IEND chunk at the end")
        return "png", w, h
    if data[:2] == b"\xff\xd8":
        return ("jpeg", *_jpeg_size(data))
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return "bmp", w, abs(h)
    raise ImageError(f"not a JPEG, PNG or BMP image (starts with {data[:8].hex()})")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageError(f"corrupt JPEG: expected a marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seglen = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            # The scan follows; a JPEG cut short loses its end-of-image marker.
            if data.rfind(b"\xff\xd9", i) < 0:
                raise ImageError("truncated JPEG: no end-of-image marker")
            return w, h
        if marker == 0xDA:
            break
        i += 2 + seglen
    raise ImageError("truncated or corrupt JPEG: no frame header before the image data")


def check_limits(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height:,} pixels, above the limit of "
                         f"{max_pixels:,} (max_pixels)")


def decode(data: bytes, net_w: int, net_h: int, max_pixels: int = DEFAULT_MAX_PIXELS,
           max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded bytes -> (RGB uint8 [h, w, 3], original (w, h)).

    Decodes at reduced scale when that still covers the network input. A JPEG's array may be a view
    into this thread's reused buffer: use or copy it before the thread decodes the next image."""
    if len(data) > max_bytes:
        raise ImageError(f"image is {len(data):,} bytes, above the limit of {max_bytes:,} (max_bytes)")
    fmt, w, h = image_size(data)
    check_limits(w, h, max_pixels)
    if fmt == "jpeg" and simplejpeg is not None:
        img = _decode_jpeg(data, w, h, net_w, net_h)
        if img is not None:
            return img, (w, h)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | _reduced_flag(fmt, w, h, net_w, net_h))
    if img is None:
        raise ImageError(f"cannot decode {fmt.upper()} image ({w}x{h}): corrupt data")
    return img, (w, h)


def _scale_factor(w: int, h: int, net_w: int, net_h: int) -> int:
    # libjpeg scales in the DCT domain; 1/2, 1/4 and 1/8 have SIMD code and are far less work than a
    # full decode + resize. Only while the reduced image still covers the network input, so no
    # detail the network could use is lost (1/2 of a 768x576 photo for 416x416 changed detections).
    return next((f for f in (8, 4, 2) if w // f >= net_w and h // f >= net_h), 1)


def _reduced_flag(fmt: str, w: int, h: int, net_w: int, net_h: int) -> int:
    if fmt != "jpeg":
        return 0
    return {1: 0, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[_scale_factor(w, h, net_w, net_h)]


def _decode_jpeg(data: bytes, w: int, h: int, net_w: int, net_h: int) -> np.ndarray | None:
    """RGB uint8 view into this thread's reused buffer (valid until its next decode), or None
    when libjpeg-turbo refuses the file here (OpenCV then gets its turn)."""
    factor = _scale_factor(w, h, net_w, net_h)
    out_w, out_h = -(-w // factor), -(-h // factor)
    need = out_w * out_h * 3
    buf = None
    if need <= REUSED_BUFFER_MAX_BYTES:
        buf = getattr(_scratch, "buf", None)
        if buf is None or buf.size < need:
            buf = _scratch.buf = np.empty(need, np.uint8)
    try:
        # strict=False: recoverable damage (extraneous bytes) decodes as it does in OpenCV; truncation
        # was already refused from the header.
        return simplejpeg.decode_jpeg(data, "rgb", min_width=out_w, min_height=out_h, min_factor=factor,
                                      buffer=buf, strict=False)
    except ValueError:
        return None


def resize(rgb: np.ndarray, net_w: int, net_h: int, mode: str, orig_wh: tuple[int, int] | None = None,
           out: np.ndarray | None = None, fill: float = LETTERBOX_FILL) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 -> float32 [net_h, net_w, 3] in [0,1], and meta (see detections.META_FIELDS).

    `orig_wh` is the size before any reduced-scale decode, so boxes map back to the original pixels.
    """
    h, w = rgb.shape[:2]
    ow, oh = orig_wh or (w, h)
    if out is None:
        out = np.empty((net_h, net_w, 3), np.float32)
    if mode == "stretch":
        small = cv2.resize(rgb, (net_w, net_h), interpolation=cv2.INTER_LINEAR) if (w, h) != (net_w, net_h) else rgb
        np.multiply(small, np.float32(1 / 255), out=out, casting="unsafe")
        meta = (oh, ow, net_h / oh, net_w / ow, 0.0, 0.0)
    elif mode == "letterbox":
        scale = min(net_w / ow, net_h / oh)
        nw, nh = max(1, round(ow * scale)), max(1, round(oh * scale))
        left, top = (net_w - nw) // 2, (net_h - nh) // 2
        small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out.fill(fill)
        np.multiply(small, np.float32(1 / 255), out=out[top:top + nh, left:left + nw], casting="unsafe")
        meta = (oh, ow, nh / oh, nw / ow, float(top), float(left))
    else:
        raise ValueError(f"resize mode {mode!r}: expected stretch or letterbox")
    return out, np.asarray(meta, np.float32)


def preprocess_bytes(data: bytes, net_w: int, net_h: int, mode: str = "stretch",
                     max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                     out: np.ndarray | None = None, fill: float = LETTERBOX_FILL) -> tuple[np.ndarray, np.ndarray]:
    rgb, orig_wh = decode(data, net_w, net_h, max_pixels, max_bytes)
    return resize(rgb, net_w, net_h, mode, orig_wh, out, fill)


def preprocess_array(rgb: np.ndarray, net_w: int, net_h: int, mode: str = "stretch",
                     max_pixels: int = DEFAULT_MAX_PIXELS, out: np.ndarray | None = None, fill: float = LETTERBOX_FILL):
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"raw image must be uint8 [height, width, 3] RGB, got {rgb.dtype} {list(rgb.shape)}")
    check_limits(rgb.shape[1], rgb.shape[0], max_pixels)
    return resize(np.ascontiguousarray(rgb), net_w, net_h, mode, None, out, fill)


def preprocess_files(paths, width: int, height: int, mode: str = "stretch", fill: float = LETTERBOX_FILL) -> np.ndarray:
    """Image files -> one float32 [n, height, width, 3] batch (the build's parity photos, the importer's probe)."""
    return np.stack([preprocess_bytes(Path(p).read_bytes(), width, height, mode, fill=fill)[0] for p in paths])
