"""The images a job starts from: decoded once per sweep, recoloured, masked, initialized.

:class:`ImageCache` decodes each (file, size) once; :func:`color_inputs` applies colour
control (Gatys et al. 2017, Sec. 5); :func:`region_masks` reads spatial control's masks
(Sec. 4); :func:`initial_image` makes the optimization's starting image. Used by
:mod:`nstjax.build` (one job) and :mod:`nstjax.pyramid` (a level's start, upsampled).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import image
from nstjax.errors import UsageError
from nstjax.settings import INITS, Settings

ImageLike = str | os.PathLike | np.ndarray


class ImageCache:
    """Decodes each (path, size) once (per sweep); arrays pass through."""

    def __init__(self):
        self._images: dict = {}

    def get(self, img: ImageLike, long_side: int | None = None, size=None) -> np.ndarray:
        if isinstance(img, np.ndarray):
            return from_array(img, long_side, size)
        key = (str(img), long_side, size)
        if key not in self._images:
            self._images[key] = image.load(img, long_side=long_side, size=size)
        return self._images[key]


def from_array(img: np.ndarray, long_side, size) -> np.ndarray:
    arr = np.asarray(img, np.float32)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise UsageError(f"image arrays must be HxWx3, got shape {arr.shape}")
    if size is not None:
        image.check_target("array", size[1], size[0])
        return image.resize(arr, *size) if arr.shape[:2] != tuple(size) else arr
    if long_side is not None:
        w, h = image.target_size(arr.shape[1], arr.shape[0], long_side)
        image.check_target("array", w, h)
        return image.resize(arr, h, w) if (h, w) != arr.shape[:2] else arr
    return arr


def initial_image(settings: Settings, content_HxWx3: np.ndarray, styles: Sequence) -> np.ndarray:
    """The starting image of ``settings.init``: content, noise, style or an image file.
    ``arbitrary`` (the fast network's output) is made by :mod:`nstjax.build`, which sits
    above :mod:`nstjax.arbitrary` in the layering; this module sits below it."""
    h, w = content_HxWx3.shape[:2]
    if settings.init == "content":
        return content_HxWx3.copy()
    if settings.init == "noise":
        key = jax.random.fold_in(jax.random.key(settings.seed), 0)
        noise = jax.random.normal(key, (h, w, 3), jnp.float32)
        return np.asarray(127.5 + settings.init_noise * noise, np.float32)
    if settings.init == "arbitrary":
        raise ValueError("init 'arbitrary' is the fast network's output: nstjax.build makes it")
    if settings.init == "style":
        return from_array(np.asarray(styles[0]), None, (h, w))
    return image.load(Path(settings.init), size=(h, w))


def upsample(image_HxWxC: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A pyramid level's result brought to the next level's size (bicubic)."""
    x = jnp.asarray(image_HxWxC, jnp.float32)
    return np.asarray(jax.image.resize(x, (*hw, x.shape[-1]), "cubic"), np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    from nstjax import color  # noqa: PLC0415

    return color.rgb_to_yiq(rgb)[..., :1].astype(np.float32)


def color_inputs(settings: Settings, content_img, style_imgs):
    """Colour control (Gatys et al. 2017, Sec. 5). ``histogram``: each style image
    recoloured to the content's colour mean and covariance. ``luminance``: content and
    styles become grey (Y, Y, Y) images of their luminance, the styles' matched to the
    content's mean and std; returns the content's RGB for the final recombination."""
    from nstjax import color  # noqa: PLC0415

    if settings.preserve_color == "histogram":
        styles = [
            color.match_histogram(s, content_img, settings.color_transfer) for s in style_imgs
        ]
        return content_img, styles, None
    content_y, styles_y = color.luminance_inputs(content_img, style_imgs)
    grey = [np.repeat(y, 3, axis=-1).astype(np.float32) for y in (content_y, *styles_y)]
    return grey[0], grey[1:], np.asarray(content_img, np.float32)


def region_masks(settings: Settings, content_img, style_imgs, masks, style_masks):
    """Region masks of the content (HxW {0,1}) and each style image's own (or None)."""
    from nstjax import masks as masks_lib  # noqa: PLC0415

    hw = content_img.shape[:2]
    if masks is not None:
        region = [masks_lib.from_array(m, hw) for m in masks]
    elif settings.masks:
        region = [masks_lib.load(m, hw) for m in settings.masks]
    else:
        return None, None
    given = list(style_masks) if style_masks is not None else list(settings.style_masks)
    if given and len(given) != len(style_imgs):
        raise UsageError(f"got {len(given)} style masks for {len(style_imgs)} style images "
                         "(use '-' for a style image without one)")  # fmt: skip
    style_region = []
    for img, m in zip(style_imgs, given or [None] * len(style_imgs), strict=True):
        if m is None or (isinstance(m, str) and m in ("", "-")):
            style_region.append(None)
        elif isinstance(m, str):
            style_region.append(masks_lib.load(m, img.shape[:2]))
        else:
            style_region.append(masks_lib.from_array(m, img.shape[:2]))
    return region, style_region


def check_init(settings: Settings) -> None:
    if settings.init not in INITS and not Path(settings.init).is_file():
        raise UsageError(
            f"--init must be one of {INITS} or an image file; {settings.init!r} is neither"
        )
