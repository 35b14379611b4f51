"""Image files in and out: decode, convert modes, resize, atomic save.

Images travel through nstjax as float32 ``HxWx3`` RGB arrays in [0, 255]
("pixel space"); each weight source's preprocessing maps pixel space to the
network's input space (see :mod:`nstjax.weights.preprocessing`).

Decompression bombs: an image file may declare a size far beyond what it holds (a
100-byte PNG can declare 30000x30000 pixels, 2.7 GB decoded). :func:`open_rgb` reads
the size from the file's header and refuses, before decoding anything, an image of
more than ``NSTJAX_MAX_PIXELS`` pixels (environment variable; default
:data:`DEFAULT_MAX_PIXELS`, 100 megapixels), with a UsageError that names the limit.
PIL has a check of its own (a warning above ``PIL.Image.MAX_IMAGE_PIXELS``, about 89
megapixels, an error above twice that), which would refuse a large image before ours
could name the limit, or refuse one that ``NSTJAX_MAX_PIXELS`` allows. So, under a
lock and restored afterwards, PIL's limit is lifted while the header is read and
raised to ours, if lower, while the image is decoded (some decoders check the size of
a frame or tile): ``NSTJAX_MAX_PIXELS`` alone decides.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nstjax import atomic
from nstjax.errors import UsageError

SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")

MAX_PIXELS_ENV = "NSTJAX_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000
_PIL_LIMIT_LOCK = threading.Lock()


def max_pixels() -> int:
    """The most pixels an input image may have: ``$NSTJAX_MAX_PIXELS``, else 100 million."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = 0.0
    if not (1 <= value < 2**63 and value == int(value)):  # not inf, not 1e400
        raise UsageError(
            f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, got {text!r}"
        )
    return int(value)


def _too_large(path: Path, width: int, height: int, limit: int) -> UsageError:
    return UsageError(
        f"image {str(path)!r} is {width}x{height} ({width * height:,} pixels), more than the "
        f"limit of {limit:,} pixels; set {MAX_PIXELS_ENV} to raise it"
    )


@contextlib.contextmanager
def _pil_limit(limit: int | None) -> Iterator[None]:
    """PIL's own decompression-bomb limit raised to at least ``limit``, or lifted if None
    (see the module docstring)."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        if saved is not None and (limit is None or saved < limit):
            Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _to_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited over ``background``."""
    if img.mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            peak = 1.0
        arr = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        under = Image.new("RGBA", rgba.size, (*background, 255))
        img = Image.alpha_composite(under, rgba)
    return img.convert("RGB")


def open_rgb(path: str | os.PathLike, background=(255, 255, 255)) -> Image.Image:
    """Opens an image file as 8-bit RGB, EXIF orientation applied, transparent pixels
    composited over ``background`` (white; a mask's is black: nothing painted there).

    Raises:
      UsageError: the file is missing, unreadable, or has more pixels than
        :func:`max_pixels` allows (checked on its header, before decoding).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"image not found: {str(path)!r}")
    limit = max_pixels()
    try:
        with _pil_limit(None):  # ours is checked right after
            img = Image.open(path)  # reads the header only
        with img:
            width, height = img.size
            if width * height > limit:
                raise _too_large(path, width, height, limit)
            with _pil_limit(limit):  # some decoders check a frame's or tile's size
                img.load()
            return _to_rgb(ImageOps.exif_transpose(img), background)
    except Image.DecompressionBombError as e:  # PIL's check on a part (a frame, a tile)
        raise UsageError(
            f"cannot read image {str(path)!r}: {e} (the limit is {limit:,} pixels; "
            f"set {MAX_PIXELS_ENV} to raise it)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"cannot read image {str(path)!r}: {e}") from None


def target_size(width: int, height: int, long_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is ``long_side``."""
    if long_side is None:
        return width, height
    if long_side < 1:
        raise UsageError(f"image size must be positive, got {long_side}")
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_target(what: str, width: int, height: int) -> None:
    """Refuses to resize an image to more pixels than :func:`max_pixels` allows (a large
    ``--size`` would otherwise allocate it, and a run that size is refused later anyway:
    the memory estimate of :mod:`nstjax.memory`)."""
    limit = max_pixels()
    if width * height > limit:
        raise UsageError(
            f"image {what} resized to {width}x{height} would have {width * height:,} pixels, "
            f"more than the limit of {limit:,}; use a smaller size (or set "
            f"{MAX_PIXELS_ENV} to raise the limit)"
        )


def load(
    path: str | os.PathLike,
    long_side: int | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Loads ``path`` as float32 HxWx3 RGB in [0, 255].

    Args:
      path: the image file.
      long_side: resize so that the longer side has this many pixels.
      size: exact (height, width), overriding ``long_side``.
    """
    img = open_rgb(path)
    if size is not None:
        w, h = size[1], size[0]
    else:
        w, h = target_size(*img.size, long_side)
    check_target(repr(str(path)), w, h)
    if (w, h) != img.size:
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32)


def resize(image_HxWx3: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes a float pixel-space image (per channel, Lanczos)."""
    chans = [
        Image.fromarray(np.asarray(image_HxWx3[..., c], np.float32), mode="F") for c in range(3)
    ]
    out = [np.asarray(c.resize((width, height), Image.Resampling.LANCZOS)) for c in chans]
    return np.stack(out, axis=-1).astype(np.float32)


def to_uint8(image_HxWx3: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image_HxWx3, np.float32)), 0, 255).astype(np.uint8)


def check_output(path: str | os.PathLike) -> Path:
    """Fails early if ``path`` has an unknown suffix or cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in SAVE_FORMATS:
        raise UsageError(
            f"unknown image suffix {path.suffix!r} for {str(path)!r}; "
            f"use one of {', '.join(sorted(SAVE_FORMATS))}"
        )
    return atomic.check_writable(path)


def encode(image_HxWx3: np.ndarray, suffix: str = ".png") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image_HxWx3)).save(buf, SAVE_FORMATS[suffix.lower()])
    return buf.getvalue()


def save(path: str | os.PathLike, image_HxWx3: np.ndarray) -> Path:
    """Writes a pixel-space image atomically; format from the suffix."""
    path = check_output(path)
    return atomic.write_bytes(path, encode(image_HxWx3, path.suffix))
