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
import numpy as np

from nstjax import aot, memory
from nstjax.arbitrary import api, bare_command
from nstjax.arbitrary import weights as arbitrary_weights
from nstjax.inputs import ImageCache, ImageLike
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


def _transfer(params, contents_Bx, vecs_Bx100, strengths_B, own_style: bool):
    """The transformer on a batch; ``own_style``: some strength is not 1, so each content
    image's own style vector is blended in (the predictor runs on the contents too)."""
    if own_style:
        own = api.style_vector(params, contents_Bx)
        s = strengths_B[:, None]
        vecs_Bx100 = s * vecs_Bx100 + (1.0 - s) * own
    return api.transfer(params, contents_Bx, vecs_Bx100)


def _style_vector(params, style_1xHxWx3):
    """One style image's vector (1 x 100), cropped and resized as :func:`api.prepare_style`."""
    return api.style_vector(params, style_1xHxWx3)


# Whole executables through nstjax's store (:mod:`nstjax.aot`): a warm command neither
# traces the Flax networks (~1.7 s of a 384 px command) nor looks them up in JAX's cache.
# Each also kept as a bare record, which a warm command runs without importing JAX
# (:mod:`nstjax.arbitrary.bare_command`).
_transfer_jit = aot.Jit(_transfer, static_argnums=(4,), bare_name=bare_command.TRANSFER)
_style_vector_jit = aot.Jit(_style_vector, bare_name=bare_command.STYLE_VECTOR)


def _style_vec(params, job: ArbitraryJob, cache: dict) -> np.ndarray:
    key = (job.style_key, tuple(job.blend)) if job.style_key is not None else None
    if key is not None and key in cache:
        return cache[key]
    vecs = [np.asarray(_style_vector_jit(params, bare_command.style_input(s)))[0]
            for s in job.styles]  # fmt: skip
    vec = bare_command.blend(vecs, job.blend)
    if key is not None:
        cache[key] = vec
    return vec


def load_params() -> dict:
    """The fast network's params, committed to the device: the programs' keys in nstjax's
    store need committed arrays (load once per run, pass to :func:`run_group`)."""
    return jax.device_put(arbitrary_weights.load())


def run_group(
    jobs: list[ArbitraryJob], batch_size: int, params: dict | None = None
) -> Iterator[tuple[ArbitraryJob, np.ndarray, float]]:
    """Yields (job, pixel-space HxWx3 output, seconds of its batch) per job (a group:
    one content shape); refuses a batch that cannot fit before any work."""
    if not jobs:  # every variant of the group held or done by other runners
        return
    cpu = jax.default_backend() == "cpu"
    memory.fit_arbitrary(jobs[0].content_HxWx3.shape[:2], min(batch_size, len(jobs)), cpu)
    params = load_params() if params is None else jax.device_put(params)
    vec_cache: dict = {}
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        t0 = time.perf_counter()
        vecs = np.stack([_style_vec(params, j, vec_cache) for j in batch])
        contents = bare_command.content_input([j.content_HxWx3 for j in batch])
        strengths = np.asarray([j.strength for j in batch], np.float32)
        own_style = bool(np.any(strengths != 1.0))
        out = np.asarray(_transfer_jit(params, contents, vecs, strengths, own_style)) * 255.0
        seconds = time.perf_counter() - t0
        for i, j in enumerate(batch):
            yield j, out[i], seconds


def metrics(job: ArbitraryJob, seconds: float, batch: int = 1) -> dict:
    h, w = job.content_HxWx3.shape[:2]
    return bare_command.metrics(job.settings, h, w, job.strength, job.blend, seconds, batch,
                                jax.default_backend())  # fmt: skip


def stylize_one(settings: Settings, content: ImageLike, styles: Sequence[ImageLike]):
    """One run: returns (pixel-space float HxWx3, metrics)."""
    job = build_job(settings, content, styles)
    job, out, seconds = next(run_group([job], 1))
    m = metrics(job, seconds)
    m["seconds_with_compile"] = seconds
    return out, m
