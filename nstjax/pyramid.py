"""Coarse-to-fine runs: a pyramid of sizes (``settings.scales``), each a job of the engine.

Each level optimizes at its own size, starting from the previous level's result
upsampled (bicubic); the styles are resized per level as ``style_scale`` says (relative
to that level's size), so the style statistics keep their scale relative to the output.
The optimizer state is reset at every level: L-BFGS curvature pairs and Adam moments
belong to the previous level's variables (another number of pixels), so they cannot be
carried over. The PRNG key, the seed, the loss weights and the terms are the same at
every level.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from nstjax import build, engine, inputs
from nstjax.errors import NstError
from nstjax.settings import Settings
from nstjax.weights import api as weights_api


def run(
    settings: Settings,
    content,
    styles: Sequence,
    weights: weights_api.Weights,
    on_chunk: Callable | None = None,
    images: inputs.ImageCache | None = None,
    stop_on_nonfinite: bool = True,
    **job_kwargs,
):
    """Runs every level; returns (the last level's outcome, metrics of the whole run).

    ``on_chunk(job, level, step, records_KxN, state)`` is called after every chunk.
    The metrics' per-step lists run over all levels (``levels`` says where each starts).
    """
    images = images or inputs.ImageCache()
    raw, outcome, history = None, None, []
    levels, t0 = [], time.perf_counter()
    all_levels = settings.levels()
    for i, level in enumerate(all_levels):
        if i < len(all_levels) - 1:  # only the last level's output is scored
            level = dataclasses.replace(level, panel="off")
        job = build.build_job(level, content, styles, weights, images, init_image=raw,
                              **job_kwargs)  # fmt: skip

        def chunk(jobs, step, rec, state, job=job, i=i):
            if on_chunk is not None:
                on_chunk(job, i, step, rec[0], state)

        outcome = next(engine.run_group([job], 1, chunk, stop_on_nonfinite=stop_on_nonfinite))
        if outcome.error:
            if stop_on_nonfinite:
                raise NstError(f"pyramid level {i} ({level.size} px): {outcome.error}")
            break
        raw = outcome.image_HxWx3
        history.append(outcome.history)
        levels.append(
            {
                "size": level.size,
                "steps": level.steps,
                "height": int(raw.shape[0]),
                "width": int(raw.shape[1]),
                "first_step": int(sum(h.shape[1] for h in history[:-1])),
                "final_loss": float(outcome.final[0]),
                "compile_seconds": outcome.compile_seconds,
                "run_seconds": outcome.run_seconds,
            }
        )
    m = engine.metrics(outcome)
    if history and len(history) == len(levels):
        whole = np.concatenate(history, axis=1)
        keys = outcome.keys
        m.update({k: [float(x) for x in whole[j]] for j, k in enumerate(keys[:4])})
        m["terms"] = {k: [float(x) for x in whole[j + 4]] for j, k in enumerate(keys[4:])}
        m["steps"] = int(whole.shape[1])
    m["levels"] = levels
    m["settings"] = settings.as_dict()
    m["run_seconds"] = time.perf_counter() - t0
    m["compile_seconds"] = sum(lv["compile_seconds"] for lv in levels)
    return outcome, m
