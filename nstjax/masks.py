"""Spatial guidance masks (Gatys et al. 2017, "Controlling Perceptual Factors in Neural
Style Transfer", Section 4 "Spatial control").

A region of the output is a binary mask of the content image (a greyscale image file
thresholded at 128, transparent pixels outside, ``!PATH`` for its complement, resized
with the content; a mask that selects no pixel is refused); each style
image may carry its own mask of the region it contributes (else the whole image). For
a layer, the mask is brought to the layer's resolution by following the network:

* ``mean``: every 2x2 pooling averages the mask (the paper's simple downsampling; values
  in [0, 1] at region borders);
* ``inside``: the paper's eroded guidance: after every 3x3 convolution a position keeps
  weight 1 only if its whole 3x3 neighbourhood was inside (erosion), and pooling keeps a
  position only if all its inputs were inside, so a feature counts for a region only if
  its receptive field lies in it (image borders do not erode).

Both are host-side numpy, once per run. Guided Gram matrices use these masks as
per-position weights (``nstjax.terms.gatys``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from nstjax import image, vgg
from nstjax.errors import UsageError

MODES = ("mean", "inside")


def load(spec: str, hw: tuple[int, int]) -> np.ndarray:
    """A mask file (``!`` prefix: complement) as float32 {0, 1} of size ``hw``;
    transparent pixels are outside (composited over black)."""
    invert = spec.startswith("!")
    path = spec[1:] if invert else spec
    img = image.open_rgb(path, background=(0, 0, 0)).convert("L")
    if img.size != (hw[1], hw[0]):
        img = img.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    mask = (np.asarray(img, np.float32) >= 128).astype(np.float32)
    return _not_empty(1.0 - mask if invert else mask, f"mask {spec!r}")


def from_array(mask, hw: tuple[int, int]) -> np.ndarray:
    """An array mask (any numbers; > 0.5 is inside) resized to ``hw``."""
    arr = np.asarray(mask, np.float32)
    if arr.ndim != 2:
        raise UsageError(f"a mask array must be HxW, got shape {arr.shape}")
    if arr.shape != tuple(hw):
        pil = Image.fromarray((arr > 0.5).astype(np.uint8) * 255).resize(
            (hw[1], hw[0]), Image.Resampling.BILINEAR
        )
        arr = np.asarray(pil, np.float32) / 255.0
    return _not_empty((arr > 0.5).astype(np.float32), "a mask array")


def _not_empty(mask_HxW: np.ndarray, what: str) -> np.ndarray:
    """A region without a pixel has no loss and no gradient (a style mask's: a zero Gram
    target): refused rather than run."""
    if not mask_HxW.any():
        raise UsageError(
            f"{what} selects no pixel at {mask_HxW.shape[1]}x{mask_HxW.shape[0]} (inside: "
            "grey 128 or more, transparent pixels outside)"
        )
    return mask_HxW


def _erode3(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1, constant_values=1.0)  # the image border is not outside the region
    h, w = m.shape
    return np.min([p[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


def _pool(m: np.ndarray, mode: str, ceil_mode: bool) -> np.ndarray:
    h, w = m.shape
    oh, ow = vgg.pooled_size(h, ceil_mode), vgg.pooled_size(w, ceil_mode)
    fill = 1.0 if mode == "inside" else np.nan
    p = np.full((2 * oh, 2 * ow), fill, np.float32)
    p[: min(h, 2 * oh), : min(w, 2 * ow)] = m[: 2 * oh, : 2 * ow]
    blocks = p.reshape(oh, 2, ow, 2)
    if mode == "inside":
        return blocks.min(axis=(1, 3))
    return np.nanmean(blocks, axis=(1, 3)).astype(np.float32)


def layer_masks(
    mask_HxW: np.ndarray, layers, mode: str = "mean", ceil_mode: bool = False
) -> dict[str, np.ndarray]:
    """The mask at the resolution of each of ``layers`` (see the module docstring)."""
    if mode not in MODES:
        raise UsageError(f"unknown mask mode {mode!r}; use one of {MODES}")
    wanted = set(layers)
    last = max(vgg.LAYER_INDEX[name] for name in wanted)
    m = np.asarray(mask_HxW, np.float32)
    out = {}
    for name in vgg.LAYERS[: last + 1]:
        if name.startswith("conv") and mode == "inside":
            m = _erode3(m)
        elif name.startswith("pool"):
            m = _pool(m, mode, ceil_mode)
        if name in wanted:
            out[name] = m
    return out
