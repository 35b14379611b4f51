"""Tiled gradients: images larger than memory allows, one tile at a time.

The terms that support tiles (:func:`supported`: ``mse``, ``gram``, ``meanstd`` and
the pixel terms such as ``tv``) are functions of sums over the positions of their
layers: a Gram matrix sums ``f f^T`` (Gatys et al. 2016, eq. 3), the content loss sums
squared differences (eq. 1), the BN statistics sum ``f`` and ``f^2`` (Li et al. 2017).
The image is cut into *cores*, a partition into squares of ``tile`` pixels whose
corners are multiples of :data:`ALIGN` (so every pooling grid of a tile lines up with
the whole image's), and each core is computed in a *tile*: the core plus a halo that
covers the receptive field of the deepest layer read (:func:`nstjax.vgg.halo`), so
the features at the core's positions are exactly the whole image's. Then

1. stats pass (forward only): ``S_l = sum over tiles of tile_stats(core features)``;
2. the loss ``L(S)`` and ``g = dL/dS`` from the sums, in one small program (pixel
   terms, e.g. TV, read the whole image there: their cost is a few floats a pixel);
3. gradient pass: for each tile, the vector-Jacobian product of its ``S_tile`` with
   ``g``, added into the image's gradient.

By the chain rule ``dL/dx = sum_tiles g . dS_tile/dx``: the gradient is the untiled
one, to float32 rounding (``tests/test_tiles.py`` checks it at 256 px to 1e-4). The
memory is one tile's forward and backward plus the image-sized optimizer state; the
price is one more forward per step and the halos' recomputation.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import objective, optim, vgg, xla_flags
from nstjax.errors import UsageError
from nstjax.terms import registry

ALIGN = 16  # the downsampling of relu5_1 (four 2x2 poolings)


@dataclasses.dataclass(frozen=True)
class Tile:
    """A crop ``[y0, y1) x [x0, x1)`` of the image and the core it owns (pixels)."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int

    @property
    def geometry(self) -> tuple[int, int]:
        """What decides the compiled programs: the crop's size. Its offset and the core
        within it are dynamic arguments (:meth:`core`)."""
        return (self.y1 - self.y0, self.x1 - self.x0)

    def core(self, height: int, width: int) -> np.ndarray:
        """The core in crop coordinates, ``[y0, y1, x0, x1]``; a core that ends at the
        image's edge ends at "infinity" (Caffe's ceil pooling adds a last position)."""
        end = 1 << 30
        return np.asarray([self.cy0 - self.y0, end if self.cy1 == height else self.cy1 - self.y0,
                           self.cx0 - self.x0, end if self.cx1 == width else self.cx1 - self.x0],
                          np.int32)  # fmt: skip


def _spans(n: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """(crop start, crop end, core start, core end) along one axis. Crops are
    ``tile + 2 halo`` long where the image allows, shifted inward at the edges (more
    context, same core), starting at multiples of :data:`ALIGN`; when ``n`` is not a
    multiple of it, the crops that reach the end are shorter instead."""
    size = min(n, tile + 2 * halo)
    last = (n - size) // ALIGN * ALIGN  # the last aligned start of a whole crop
    out = []
    for c0 in range(0, n, tile):
        c1 = min(n, c0 + tile)
        y0 = max(0, min(c0 - halo, last))  # c0 - halo: both multiples of ALIGN
        y1 = y0 + size
        if y1 < n and y1 < c1 + halo:  # short of the core's halo: to the end instead
            y1 = n
        out.append((y0, y1, c0, c1))
    return out


def grid(height: int, width: int, tile: int, halo: int) -> list[Tile]:
    """Cores of ``tile`` px (the last ones smaller) with their halo-extended crops: one
    crop size (one compiled program) when the sides are multiples of :data:`ALIGN`."""
    if tile <= 0 or tile % ALIGN:
        raise UsageError(f"tile must be a positive multiple of {ALIGN} px, got {tile}")
    return [Tile(y0, y1, x0, x1, cy0, cy1, cx0, cx1)
            for y0, y1, cy0, cy1 in _spans(height, tile, halo)
            for x0, x1, cx0, cx1 in _spans(width, tile, halo)]  # fmt: skip


def supported(obj: objective.Objective, tile: int | None = None) -> None:
    """Raises a UsageError naming what cannot be tiled: terms without sums over
    positions, stochastic terms (a tiled step has no key), spatial masks, pool5 (its
    grid is 32 px, tiles align to 16) and, given ``tile``, a tile smaller than the halo
    (every core near an edge would be its own compiled geometry)."""
    kinds = [registry.get(t.kind) for t in obj.terms]
    bad = [t.name for t, k in zip(obj.terms, kinds, strict=True)
           if (k.reads == "features" and k.tile_stats is None) or k.stochastic]  # fmt: skip
    if bad or obj.regions:
        ok = sorted(k for k, v in registry.registered().items()
                    if (v.tile_stats or v.reads == "pixels") and not v.stochastic)  # fmt: skip
        what = f"loss terms {bad}" if bad else "spatial control (masks)"
        raise UsageError(f"{what} cannot be tiled; tiles work with: {ok}")
    if any(2 ** vgg.downsampling(layer) > ALIGN for layer in obj.layers):
        raise UsageError("tiles read layers up to relu5_4 (pool5's 32-px grid is not tiled)")
    halo = vgg.halo(obj.layers, ALIGN)
    if tile is not None and tile < halo:
        raise UsageError(f"tile {tile} px is smaller than its halo ({halo} px for these "
                         f"layers): use --tile {max(halo, 512)}")  # fmt: skip


def _crop_stats(obj, vgg_params, crop_1xhxwxC, targets, y0, x0, core) -> dict:
    """Every tiled term's sums over the core's positions of one crop (``core``: its
    bounds in crop pixels, :meth:`Tile.core`), as 0/1 weights per position."""
    feats = objective.features(obj, vgg_params, objective.grey_to_rgb(crop_1xhxwxC))
    stats: dict = {}
    for i, t in enumerate(obj.terms):
        kind = registry.get(t.kind)
        if kind.reads == "pixels":
            continue
        stats[i] = {}
        for layer in t.layers:
            s = 2 ** vgg.downsampling(layer)
            f = feats[layer]
            rows, cols = jnp.arange(f.shape[1]), jnp.arange(f.shape[2])
            inside_y = (rows >= core[0] // s) & (rows < core[1] // s)
            inside_x = (cols >= core[2] // s) & (cols < core[3] // s)
            weight_HxW = (inside_y[:, None] & inside_x[None, :]).astype(f.dtype)
            # several style images without a blend: "whole" targets do not enter the
            # sums (the loss blends per image)
            target = (targets[i][0] if isinstance(targets[i], list) else targets[i])[layer]
            if kind.tile_target == "positions":  # the crop's own positions
                start = (0, y0 // s, x0 // s, 0)
                target = jax.lax.dynamic_slice(target, start, (target.shape[0], *f.shape[1:]))
            stats[i][layer] = kind.tile_stats(f, target, weight_HxW, **t.option_dict())
    return stats


def _crop(image_1xHxWxC, geometry, y0, x0):
    h, w = geometry
    return jax.lax.dynamic_slice(image_1xHxWxC, (0, y0, x0, 0), (1, h, w, image_1xHxWxC.shape[-1]))


def _stats_into(obj, geometry, vgg_params, acc, image, targets, y0, x0, core):
    crop = _crop(image, geometry, y0, x0)
    stats = _crop_stats(obj, vgg_params, crop, targets, y0, x0, core)
    return jax.tree.map(jnp.add, acc, stats)


def _loss_from_stats(obj, hws, stats, image_1xHxWxC, targets, weights):
    """(total, parts) of the whole image from its sums (pixel terms read the image)."""
    pixels = objective.grey_to_rgb(image_1xHxWxC)

    def layer_value(i, j, layer, key):
        t = obj.terms[i]
        kind = registry.get(t.kind)
        opts = t.option_dict()
        if layer is None:
            return kind.loss(pixels, None, key, **opts)
        if isinstance(targets[i], list):  # one target per style image (as objective.loss)
            return sum(weights["blend"][s] * kind.tile_loss(stats[i][layer], ts[layer],
                                                            hws[layer], **opts)
                       for s, ts in enumerate(targets[i]))  # fmt: skip
        return kind.tile_loss(stats[i][layer], targets[i][layer], hws[layer], **opts)

    return objective.combine(obj, weights, jax.random.PRNGKey(0), layer_value)


def _loss_and_grads(obj, hws, stats, image, targets, weights):
    """The loss, its record, dL/dS and the pixel terms' gradient (the accumulator)."""
    f = functools.partial(_loss_from_stats, obj, hws)
    (total, parts), (g_stats, g_image) = jax.value_and_grad(f, (0, 1), has_aux=True)(
        stats, image, targets, weights
    )
    return total, objective.record(total, parts), g_stats, g_image


def _grad_into(obj, geometry, vgg_params, acc, image, targets, g_stats, y0, x0, core):
    """``acc`` plus this tile's share of the gradient: the VJP of its sums with g."""

    def contribution(crop):
        stats = _crop_stats(obj, vgg_params, crop, targets, y0, x0, core)
        return sum(jnp.vdot(g, s) for g, s in zip(jax.tree.leaves(g_stats), jax.tree.leaves(stats),
                                                   strict=True))  # fmt: skip

    crop = _crop(image, geometry, y0, x0)
    g = jax.grad(contribution)(crop)
    start = (0, y0, x0, 0)
    return jax.lax.dynamic_update_slice(acc, jax.lax.dynamic_slice(acc, start, g.shape) + g, start)


def _batched(fn, in_axes):
    """``fn`` ``vmap``-ed over the runs axis (``None``: shared arguments)."""
    return jax.vmap(fn, in_axes=in_axes)


class TiledRunner:
    """:class:`nstjax.optim.ChunkRunner`'s interface for a tiled step (steps dispatched
    from the host, one at a time: ``loop`` and ``chunk_size`` do not apply): compiles the
    stats and gradient programs of each crop size (one when the image's sides are
    multiples of 16, at most four), the loss program and the optimizer update once;
    ``state, records = runner(state, n, ctx)``."""

    def __init__(self, obj, opt, tile: int, state: dict, ctx: dict):
        supported(obj, tile)
        if opt.line_search:
            raise UsageError("tiles take no line search (it evaluates whole images)")
        self.loop, self.obj, self.opt = "host", obj, opt
        _, _, h, w, _ = state["image"].shape
        self.tiles = grid(h, w, tile, vgg.halo(obj.layers, ALIGN))
        self._where = [(t.geometry, jnp.int32(t.y0), jnp.int32(t.x0), jnp.asarray(t.core(h, w)))
                       for t in self.tiles]  # fmt: skip
        self.hws = {
            layer: objective.feature_hw(layer, (h, w), obj.ceil_mode) for layer in obj.layers
        }
        options = xla_flags.step_compiler_options(jax.default_backend())
        image, targets = state["image"], ctx["runs"]["targets"]
        vgg_params, (_, y0, x0, core) = ctx["vgg"], self._where[0]
        t0 = time.perf_counter()
        shapes = jax.eval_shape(
            _batched(functools.partial(_crop_stats_full, obj, self.tiles[0].geometry),
                     (None, 0, 0, None, None, None)),
            vgg_params, image, targets, y0, x0, core,
        )  # fmt: skip
        self._zero_stats = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        acc = self._zero_stats()
        self._stats, self._grad = {}, {}
        for geometry in dict.fromkeys(t.geometry for t in self.tiles):
            into = _batched(functools.partial(_stats_into, obj, geometry),
                            (None, 0, 0, 0, None, None, None))  # fmt: skip
            self._stats[geometry] = (
                jax.jit(into, donate_argnums=(1,))
                .lower(vgg_params, acc, image, targets, y0, x0, core)
                .compile(options)
            )
            grad = _batched(functools.partial(_grad_into, obj, geometry),
                            (None, 0, 0, 0, 0, None, None, None))  # fmt: skip
            self._grad[geometry] = (
                jax.jit(grad, donate_argnums=(1,))
                .lower(vgg_params, image, image, targets, acc, y0, x0, core)
                .compile(options)
            )
        loss = _batched(functools.partial(_loss_and_grads, obj, self.hws), (0, 0, 0, 0))
        self._loss = jax.jit(loss).lower(acc, image, targets, ctx["runs"]["weights"]).compile()
        update = _batched(functools.partial(optim.update, opt), (0, 0, 0, 0))
        self._update = jax.jit(update, donate_argnums=(0,))
        self.compile_seconds = time.perf_counter() - t0

    def _sums(self, image, ctx):
        stats, targets = self._zero_stats(), ctx["runs"]["targets"]
        for geometry, y0, x0, core in self._where:
            stats = self._stats[geometry](ctx["vgg"], stats, image, targets, y0, x0, core)
        return stats

    def loss_and_grad(self, image, ctx):
        """(total_R, record_RxK, grad) of a batch of images, tile by tile."""
        targets = ctx["runs"]["targets"]
        stats = self._sums(image, ctx)
        total, rec, g_stats, grad = self._loss(stats, image, targets, ctx["runs"]["weights"])
        for geometry, y0, x0, core in self._where:
            grad = self._grad[geometry](ctx["vgg"], grad, image, targets, g_stats, y0, x0, core)
        return total, rec, grad

    def __call__(self, state: dict, n_steps: int, ctx: dict):
        records = []
        for _ in range(n_steps):
            total, rec, grad = self.loss_and_grad(state["image"], ctx)
            state = self._update(state, total, grad, ctx["runs"])
            records.append(rec)
        rec = np.stack([np.asarray(r) for r in records])
        return state, np.moveaxis(rec, 0, -1)

    def final_losses(self, image_R, ctx) -> np.ndarray:
        """Records at the written image (rounded, clipped), as :func:`optim.final_losses`
        but with the step's programs (its convolutions; no PRNG key: no stochastic term
        tiles)."""
        image_R = jnp.clip(jnp.round(image_R), 0.0, 255.0)
        stats = self._sums(image_R, ctx)
        return np.asarray(self._loss(stats, image_R, ctx["runs"]["targets"],
                                     ctx["runs"]["weights"])[1])  # fmt: skip


def _crop_stats_full(obj, geometry, vgg_params, image, targets, y0, x0, core):
    crop = _crop(image, geometry, y0, x0)
    return _crop_stats(obj, vgg_params, crop, targets, y0, x0, core)
