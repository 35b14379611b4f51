"""Image files in and out: decode, convert modes, resize, atomic save.

Images travel through nstjax as float32 ``HxWx3`` RGB arrays in [0, 255]
("pixel space"); each weight source's preprocessing maps pixel space to the
network's input space (see :mod:`nstjax.weights.preprocessing`).
"""

from __future__ import annotations

import io
import os
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


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited over white."""
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
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Opens an image file as 8-bit RGB, EXIF orientation applied."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"image not found: {str(path)!r}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
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
