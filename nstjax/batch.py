"""Running a group of variants as one batched, sharded program.

Variants of a group share image shapes and layer sets, so their optimization
states and per-run inputs (targets, loss weights, learning rate) stack along a
leading "runs" axis; the step is ``vmap``-ed over it (see ``optim.any_step``) and
the runs axis is sharded over all local devices with a ``NamedSharding``. The VGG
params are replicated. Batches are padded to a fixed size (repeating the last
variant; the copies are discarded), so a group compiles exactly once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nstjax import gatys, image, monitor, objective, optim, vgg
from nstjax.settings import blend_weights
from nstjax.sweep import Variant
from nstjax.weights import api as weights_api


@dataclasses.dataclass
class Outcome:
    """What one variant produced."""

    variant: Variant
    image_HxWx3: np.ndarray | None
    history: np.ndarray  # 4 x steps
    final: np.ndarray | None  # 4
    error: str | None
    compile_seconds: float
    run_seconds: float  # wall time of its whole batch
    batch_size: int
    programs: int  # optimization programs compiled for it (the first of a group: 1, else 0)


class ImageCache:
    """Decodes each (path, size) once per sweep."""

    def __init__(self):
        self._images: dict = {}

    def get(self, path: str, long_side: int | None = None, size=None) -> np.ndarray:
        key = (path, long_side, size)
        if key not in self._images:
            self._images[key] = image.load(path, long_side=long_side, size=size)
        return self._images[key]


def _inputs(
    v: Variant,
    weights: weights_api.Weights,
    spec: objective.Spec,
    images: ImageCache,
    targets_cache: dict,
    init_cache: dict,
):
    s = v.settings
    content = images.get(v.content, s.size)
    style_side = max(1, round(s.size * s.style_scale))
    styles = [images.get(p, style_side) for p in v.styles]
    blend = blend_weights(s.style_blend, len(styles))
    key = (v.content, v.styles, tuple(blend), s.size, s.style_scale)
    if key not in targets_cache:
        params = weights.params
        targets_cache[key] = {
            "content": objective.content_targets(spec, params, content),
            "style": objective.style_targets(spec, params, styles, blend, content.shape[:2]),
        }
    init_key = (
        s.init,
        s.seed,
        s.init_noise,
        v.content,
        v.styles,
        s.style_blend,
        s.size,
        s.style_scale,
    )
    if init_key not in init_cache:  # the fast network or an init file: once per sweep
        init_cache[init_key] = gatys.initial_image(s, content, styles)
    init = init_cache[init_key]
    weights_tree = objective.make_weights(
        spec,
        s.content_weight,
        s.style_weight,
        s.tv_weight,
        s.content_layer_weights,
        s.style_layer_weights,
    )
    run = {"targets": targets_cache[key], "weights": weights_tree, "lr": np.float32(s.resolved_lr)}
    return init[None], run


def _stack(trees: Sequence):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def padded_size(n: int, batch_size: int, n_devices: int) -> int:
    """Batch size for a group of n: at most batch_size, a multiple of the device count."""
    b = min(batch_size, n)
    return -(-b // n_devices) * n_devices


def run_group(
    variants: list[Variant],
    weights: weights_api.Weights,
    batch_size: int,
    images: ImageCache,
    on_progress: Callable[[int], None] | None = None,
    on_chunk: Callable[[list[Variant], int, dict], None] | None = None,
    devices: Sequence | None = None,
):
    """Runs one group; yields an :class:`Outcome` per variant as each batch finishes."""
    s = variants[0].settings
    devices = list(devices or jax.local_devices())
    mesh = Mesh(np.array(devices), ("runs",))
    runs_sharding = NamedSharding(mesh, PartitionSpec("runs"))
    replicated = NamedSharding(mesh, PartitionSpec())
    spec = objective.Spec(
        s.content_layers, s.style_layers, s.pooling, s.gram_norm, weights.preprocessing, s.conv_impl
    )
    opt = optim.OptimizerSpec(s.optimizer, s.memory_size)
    vgg_params = jax.device_put(jax.tree.map(jnp.asarray, weights.params), replicated)
    weights = dataclasses.replace(weights, params=vgg_params)
    targets_cache: dict = {}
    init_cache: dict = {}
    size = padded_size(len(variants), batch_size, len(devices))
    runner = prepared = None
    for start in range(0, len(variants), size):
        batch = variants[start : start + size]
        real = len(batch)
        batch = batch + [batch[-1]] * (size - real)
        inits, runs = zip(
            *(_inputs(v, weights, spec, images, targets_cache, init_cache) for v in batch),
            strict=True,
        )
        init_R = jax.device_put(np.stack(inits), runs_sharding)
        state = optim.init_states_jit(opt, init_R)
        if prepared is None:  # Winograd kernel transforms, once per group
            prepared = vgg.prepare_params_jit(
                vgg_params, inits[0].shape, spec.layers, spec.conv_impl
            )
        ctx = {"vgg": prepared, "runs": jax.device_put(_stack(runs), runs_sharding)}
        programs = 0
        if runner is None:
            with monitor.count_compiles() as compiles:
                runner = optim.ChunkRunner(
                    spec, opt, s.chunk_size, s.loop, state, ctx, batched=True
                )
            compile_seconds, programs = runner.compile_seconds, compiles.count
        t0 = time.perf_counter()
        history = np.zeros((size, optim.N_RECORDED, 0), np.float32)
        for n in gatys.chunk_plan(s.steps, s.chunk_size, s.save_every):
            state, rec = runner(state, n, ctx)
            history = np.concatenate([history, rec], axis=2)
            if on_progress is not None:
                on_progress(n * real)
            if on_chunk is not None:
                on_chunk(batch[:real], history.shape[2], state)
        final = np.asarray(optim.final_losses_jit(spec, True, state["image"], ctx))
        images_R = np.asarray(state["image"])[:, 0]
        seconds = time.perf_counter() - t0
        for i, v in enumerate(batch[:real]):
            ok = np.all(np.isfinite(history[i])) and np.all(np.isfinite(final[i]))
            error = None
            if not np.all(np.isfinite(history[i])):
                bad = np.argmax(~np.all(np.isfinite(history[i]), axis=0))
                error = f"the loss became non-finite at step {int(bad)}"
            elif not ok:
                error = "the loss at the final image is non-finite"
            yield Outcome(
                v,
                images_R[i] if ok else None,
                history[i],
                final[i] if ok else None,
                error,
                compile_seconds,
                seconds,
                real,
                programs,
            )
            compile_seconds, programs = 0.0, 0  # charged to the group's first variant
