"""One Gatys run: settings -> (image, metrics).

The flow: load weights and images; compute the targets once; then run compiled
chunks of optimization steps, returning to Python between chunks for progress,
intermediate saves and a non-finite check.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import atomic, image, objective, optim, vgg
from nstjax.errors import NstError, UsageError
from nstjax.settings import INITS, Settings, blend_weights
from nstjax.weights import api as weights_api

ImageLike = str | os.PathLike | np.ndarray
LOSS_KEYS = ("loss", "content_loss", "style_loss", "tv_loss")


@dataclasses.dataclass
class Problem:
    """Everything a run needs, ready for compiled code."""

    settings: Settings
    spec: objective.Spec
    opt: optim.OptimizerSpec
    ctx: dict  # vgg params, targets, loss weights, lr (all dynamic)
    init_BxHxWx3: np.ndarray
    weights_info: dict


def _load(img: ImageLike, long_side: int | None = None, size=None) -> np.ndarray:
    if isinstance(img, np.ndarray):
        arr = np.asarray(img, np.float32)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise UsageError(f"image arrays must be HxWx3, got shape {arr.shape}")
        if size is not None and arr.shape[:2] != tuple(size):
            return image.resize(arr, *size)
        if long_side is not None and size is None:
            w, h = image.target_size(arr.shape[1], arr.shape[0], long_side)
            return image.resize(arr, h, w) if (h, w) != arr.shape[:2] else arr
        return arr
    return image.load(img, long_side=long_side, size=size)


def initial_image(settings: Settings, content_HxWx3: np.ndarray, styles: Sequence) -> np.ndarray:
    h, w = content_HxWx3.shape[:2]
    if settings.init == "content":
        return content_HxWx3.copy()
    if settings.init == "noise":
        key = jax.random.fold_in(jax.random.key(settings.seed), 0)
        noise = jax.random.normal(key, (h, w, 3), jnp.float32)
        return np.asarray(127.5 + settings.init_noise * noise, np.float32)
    if settings.init == "arbitrary":  # the fast network's output (Ghiasi et al. 2017)
        from nstjax.arbitrary import run  # noqa: PLC0415

        blend = blend_weights(settings.style_blend, len(styles))
        return run.stylize_pixels(content_HxWx3, styles, 1.0, blend)[0].astype(np.float32)
    if settings.init == "style":
        return _load(styles[0], size=(h, w))
    return _load(Path(settings.init), size=(h, w))


def prepare(
    settings: Settings,
    content: ImageLike,
    styles: Sequence[ImageLike],
    weights: weights_api.Weights | None = None,
) -> Problem:
    """Loads images and weights and computes the targets (once)."""
    if settings.init not in INITS and not Path(settings.init).is_file():
        raise UsageError(
            f"--init must be one of {INITS} or an image file; {settings.init!r} is neither"
        )
    blend = blend_weights(settings.style_blend, len(styles))
    content_img = _load(content, settings.size)
    style_side = max(1, round(settings.size * settings.style_scale))
    style_imgs = [_load(s, style_side) for s in styles]
    init = initial_image(settings, content_img, style_imgs)
    if weights is None:
        weights = weights_api.load(settings.weights, settings.weights_format)
    spec = objective.Spec(
        settings.content_layers,
        settings.style_layers,
        settings.pooling,
        settings.gram_norm,
        weights.preprocessing,
        settings.conv_impl,
    )
    vgg_params = jax.tree.map(jnp.asarray, weights.params)
    targets = {
        "content": objective.content_targets(spec, vgg_params, content_img),
        "style": objective.style_targets(
            spec, vgg_params, style_imgs, blend, content_img.shape[:2]
        ),
    }
    loss_weights = objective.make_weights(
        spec,
        settings.content_weight,
        settings.style_weight,
        settings.tv_weight,
        settings.content_layer_weights,
        settings.style_layer_weights,
    )
    ctx = {
        "vgg": vgg.prepare_params_jit(vgg_params, init[None].shape, spec.layers, spec.conv_impl),
        "targets": targets,
        "weights": loss_weights,
        "lr": jnp.float32(settings.resolved_lr),
    }
    opt = optim.OptimizerSpec(settings.optimizer, settings.memory_size)
    return Problem(settings, spec, opt, ctx, init[None], weights.info)


def chunk_plan(steps: int, chunk: int, save_every: int) -> list[int]:
    """Steps per chunk; chunks end at every save point."""
    plan, done = [], 0
    while done < steps:
        n = min(chunk, steps - done)
        if save_every:
            n = min(n, save_every - done % save_every)
        plan.append(n)
        done += n
    return plan


def optimize(problem: Problem, on_chunk: Callable[[int, np.ndarray, dict], None] | None = None):
    """Runs the optimization. Returns (final image HxWx3 float, metrics dict).

    ``on_chunk(step, losses_4xN, state)`` is called after every chunk.
    """
    s = problem.settings
    state = optim.init_state(problem.opt, problem.init_BxHxWx3)
    runner = optim.ChunkRunner(problem.spec, problem.opt, s.chunk_size, s.loop, state, problem.ctx)
    history = np.zeros((optim.N_RECORDED, 0), np.float32)
    t_run = time.perf_counter()
    for n in chunk_plan(s.steps, s.chunk_size, s.save_every):
        state, rec = runner(state, n, problem.ctx)
        rec = np.asarray(rec)
        history = np.concatenate([history, rec], axis=1)
        if not np.all(np.isfinite(rec)):
            bad = int(history.shape[1] - n + np.argmax(~np.all(np.isfinite(rec), axis=0)))
            raise NstError(
                f"the loss became non-finite at step {bad}; try a smaller --lr or "
                "smaller loss weights"
            )
        if on_chunk is not None:
            on_chunk(int(history.shape[1]), rec, state)
    jax.block_until_ready(state["image"])
    seconds_run = time.perf_counter() - t_run  # the steps alone
    final = optim.final_losses_jit(problem.spec, False, state["image"], problem.ctx)
    final = np.asarray(final)
    if not np.all(np.isfinite(final)):
        raise NstError("the loss at the final image is non-finite; try a smaller --lr")
    image_out = np.asarray(state["image"][0])
    metrics = {key: [float(v) for v in history[i]] for i, key in enumerate(LOSS_KEYS)}
    metrics.update(
        {
            "steps": int(history.shape[1]),
            "final": {key: float(final[i]) for i, key in enumerate(LOSS_KEYS)},
            "compile_seconds": runner.compile_seconds,
            "loop": runner.loop,
            "run_seconds": seconds_run,
            "seconds_per_step": seconds_run / max(1, history.shape[1]),
            "height": int(image_out.shape[0]),
            "width": int(image_out.shape[1]),
            "settings": s.as_dict(),
            "weights": problem.weights_info,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.local_devices()],
            "jax_version": jax.__version__,
        }
    )
    return image_out, metrics


def intermediate_path(output: Path, step: int) -> Path:
    return output.with_name(f"{output.stem}_{step:05d}{output.suffix}")


def stylize(
    content: ImageLike,
    styles: ImageLike | Sequence[ImageLike],
    *,
    output: str | os.PathLike | None = None,
    metrics: str | os.PathLike | None = None,
    progress: bool = False,
    weights: weights_api.Weights | None = None,
    settings: Settings | None = None,
    **overrides,
):
    """Gatys style transfer. Returns (uint8 HxWx3 image, metrics dict).

    Args:
      content: the content image (path or float HxWx3 array in [0, 255]).
      styles: one or several style images (paths or arrays).
      output: where to write the image (atomically); intermediate images go beside it.
      metrics: where to write the metrics JSON (atomically).
      progress: show a progress bar with the losses.
      weights: preloaded weights (else ``settings.weights`` is loaded).
      settings: a :class:`Settings`; keyword ``overrides`` replace its fields.
    """
    t_start = time.perf_counter()
    settings = (
        (settings or Settings()).replace(**overrides) if overrides else (settings or Settings())
    )
    if isinstance(styles, (str, os.PathLike, np.ndarray)):
        styles = [styles]
    out_path = image.check_output(output) if output is not None else None
    metrics_path = atomic.check_writable(metrics) if metrics is not None else None
    if settings.save_every and out_path is None:
        raise UsageError("--save-every needs --output")
    problem = prepare(settings, content, list(styles), weights)
    bar = _progress_bar(settings.steps) if progress else None

    def on_chunk(step, rec, state):
        if bar is not None:
            bar.update(rec.shape[1])
            bar.set_postfix(
                loss=f"{rec[0, -1]:.3g}",
                content=f"{rec[1, -1]:.3g}",
                style=f"{rec[2, -1]:.3g}",
                tv=f"{rec[3, -1]:.3g}",
            )
        if settings.save_every and step % settings.save_every == 0 and step < settings.steps:
            image.save(intermediate_path(out_path, step), np.asarray(state["image"][0]))

    try:
        result, m = optimize(problem, on_chunk)
    finally:
        if bar is not None:
            bar.close()
    out = image.to_uint8(result)
    if out_path is not None:
        image.save(out_path, out)
    m["seconds"] = time.perf_counter() - t_start
    if metrics_path is not None:
        atomic.write_json(metrics_path, m)
    return out, m


def _progress_bar(total: int):
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)
