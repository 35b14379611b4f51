"""Running the fast network on pixel-space images (shared by the CLI and ``--init arbitrary``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np

from nstjax.arbitrary import api
from nstjax.arbitrary import weights as arbitrary_weights
from nstjax.errors import UsageError

stylize_jit = jax.jit(api.stylize, static_argnames=("style_size",))
"""``api.stylize`` compiled: one call stylizes a whole batch of content images."""


def stylize_pixels(
    content_HxWx3: np.ndarray,
    styles: Sequence[np.ndarray],
    strength: float = 1.0,
    blend: Sequence[float] | None = None,
    params: dict | None = None,
):
    """Pixel space ([0, 255] float HxWx3) in and out. Returns (image, seconds)."""
    if not 0.0 <= strength <= 1.0:
        raise UsageError(f"--style-strength must be in [0, 1], got {strength}")
    params = arbitrary_weights.load() if params is None else params
    t0 = time.perf_counter()
    out = stylize_jit(
        params,
        np.asarray(content_HxWx3, np.float32)[None] / 255.0,
        [np.asarray(s, np.float32) / 255.0 for s in styles],
        1.0 if strength == 1.0 else np.float32(strength),  # 1.0 skips the content's vector
        None if blend is None else np.asarray(blend),
    )
    out = np.asarray(out[0]) * 255.0
    return out, time.perf_counter() - t0
