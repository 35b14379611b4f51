"""The fast network on batches of runs: single ``stylize`` calls and config sweeps.

Runs that share a content image size form a group; each batch of a group is one
compiled call with a per-run style vector (the blend of that run's style images) and a
per-run style strength, so a style-strength x blend grid runs batched.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nstjax.arbitrary import api
from nstjax.arbitrary import weights as arbitrary_weights
from nstjax.build import ImageCache, ImageLike
from nstjax.settings import Settings, blend_weights


@dataclasses.dataclass
class ArbitraryJob:
    """One fast-network run: pixel-space content and style images, strength, blend."""

    content_HxWx3: np.ndarray
    styles: list[np.ndarray]
    strength: float
    blend: list[float]
    settings: Settings
    style_key: Any = None  # identifies the style images (for caching their vectors)
    tag: Any = None

    def group_key(self) -> tuple:
        return ("arbitrary", self.content_HxWx3.shape)


def build_job(
    settings: Settings,
    content: ImageLike,
    styles: Sequence[ImageLike],
    images: ImageCache | None = None,
    tag: Any = None,
) -> ArbitraryJob:
    images = images or ImageCache()
    styles = list(styles)
    blend = blend_weights(settings.style_blend, len(styles))
    style_key = None
    if not any(isinstance(s, np.ndarray) for s in styles):
        style_key = tuple(str(s) for s in styles)
    return ArbitraryJob(
        images.get(content, settings.size),
        [images.get(s) for s in styles],
        float(settings.style_strength),
        blend,
        settings,
        style_key,
        tag,
    )


def _transfer(params, contents_Bx, vecs_Bx100, strengths_B):
    own = api.style_vector(params, contents_Bx)
    s = strengths_B[:, None]
    return api.transfer(params, contents_Bx, s * vecs_Bx100 + (1.0 - s) * own)


_transfer_jit = jax.jit(_transfer)
_style_vector_jit = jax.jit(api.style_vector, static_argnames=("style_size",))


def _style_vec(params, job: ArbitraryJob, cache: dict) -> np.ndarray:
    key = (job.style_key, tuple(job.blend)) if job.style_key is not None else None
    if key is not None and key in cache:
        return cache[key]
    styles = [jnp.asarray(s, jnp.float32)[None] / 255.0 for s in job.styles]
    stacked = jnp.concatenate([api.prepare_style(s) for s in styles])
    vecs = _style_vector_jit(params, stacked, style_size=None)
    vec = np.asarray(jnp.asarray(job.blend, jnp.float32) @ vecs)
    if key is not None:
        cache[key] = vec
    return vec


def run_group(
    jobs: list[ArbitraryJob], batch_size: int, params: dict | None = None
) -> Iterator[tuple[ArbitraryJob, np.ndarray, float]]:
    """Yields (job, pixel-space HxWx3 output, seconds of its batch) per job."""
    params = arbitrary_weights.load() if params is None else params
    vec_cache: dict = {}
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        t0 = time.perf_counter()
        vecs = np.stack([_style_vec(params, j, vec_cache) for j in batch])
        contents = np.stack([j.content_HxWx3 for j in batch]).astype(np.float32) / 255.0
        strengths = np.asarray([j.strength for j in batch], np.float32)
        out = np.asarray(_transfer_jit(params, contents, vecs, strengths)) * 255.0
        seconds = time.perf_counter() - t0
        for i, j in enumerate(batch):
            yield j, out[i], seconds


def metrics(job: ArbitraryJob, seconds: float, batch: int = 1) -> dict:
    h, w = job.content_HxWx3.shape[:2]
    return {
        "method": "arbitrary",
        "status": "done",
        "height": int(h),
        "width": int(w),
        "style_strength": job.strength,
        "style_blend": job.blend,
        "batch_seconds": seconds,
        "batch_size": batch,
        "settings": job.settings.as_dict(),
        "weights": {
            "source": arbitrary_weights.NAME,
            "sha256": (arbitrary_weights.cache.lookup(arbitrary_weights.NAME) or {}).get(
                "npz_sha256"
            ),
        },
        "backend": jax.default_backend(),
    }


def stylize_one(settings: Settings, content: ImageLike, styles: Sequence[ImageLike]):
    """One run: returns (pixel-space float HxWx3, metrics)."""
    job = build_job(settings, content, styles)
    job, out, seconds = next(run_group([job], 1))
    m = metrics(job, seconds)
    m["seconds_with_compile"] = seconds
    return out, m
