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
    last_y: bool
    last_x: bool

    @property
    def geometry(self) -> tuple:
        """What decides the compiled programs: the crop's size and the core within it
        (``None``: to the crop's end). Offsets are dynamic arguments."""
        return (self.y1 - self.y0, self.x1 - self.x0, self.cy0 - self.y0,
                None if self.last_y else self.cy1 - self.y0, self.cx0 - self.x0,
                None if self.last_x else self.cx1 - self.x0)  # fmt: skip


def grid(height: int, width: int, tile: int, halo: int) -> list[Tile]:
    """Cores of ``tile`` px (the last ones smaller) with their halo-extended crops."""
    if tile <= 0 or tile % ALIGN:
        raise UsageError(f"tile must be a positive multiple of {ALIGN} px, got {tile}")
    out = []
    for cy0 in range(0, height, tile):
        cy1 = min(height, cy0 + tile)
        for cx0 in range(0, width, tile):
            cx1 = min(width, cx0 + tile)
            out.append(Tile(max(0, cy0 - halo), min(height, cy1 + halo),
                            max(0, cx0 - halo), min(width, cx1 + halo),
                            cy0, cy1, cx0, cx1, cy1 == height, cx1 == width))  # fmt: skip
    return out


def supported(obj: objective.Objective) -> None:
    """Raises a UsageError naming the terms that cannot be tiled."""
    kinds = [registry.get(t.kind) for t in obj.terms]
    bad = [t.name for t, k in zip(obj.terms, kinds, strict=True)
           if k.reads == "features" and k.tile_stats is None]  # fmt: skip
    if bad or obj.regions:
        ok = sorted(k for k, v in registry.KINDS.items() if v.tile_stats or v.reads == "pixels")
        what = f"loss terms {bad}" if bad else "spatial control (masks)"
        raise UsageError(f"{what} cannot be tiled; tiles work with: {ok}")


def _crop_stats(obj, geometry, vgg_params, crop_1xhxwxC, targets, y0, x0) -> dict:
    """Every tiled term's sums over the core's positions of one crop."""
    _, _, ly0, ly1, lx0, lx1 = geometry
    feats = objective.features(obj, vgg_params, objective.grey_to_rgb(crop_1xhxwxC))
    stats: dict = {}
    for i, t in enumerate(obj.terms):
        kind = registry.get(t.kind)
        if kind.reads == "pixels":
            continue
        stats[i] = {}
        for layer in t.layers:
            s = 2 ** vgg.downsampling(layer)
            f = feats[layer][:, ly0 // s : None if ly1 is None else ly1 // s,
                             lx0 // s : None if lx1 is None else lx1 // s]  # fmt: skip
            target = targets[i][layer]
            if kind.tile_target == "positions":  # the core's own positions
                start = (0, (y0 + ly0) // s, (x0 + lx0) // s, 0)
                target = jax.lax.dynamic_slice(target, start, (target.shape[0], *f.shape[1:]))
            stats[i][layer] = kind.tile_stats(f, target, **t.option_dict())
    return stats


def _crop(image_1xHxWxC, geometry, y0, x0):
    h, w = geometry[:2]
    return jax.lax.dynamic_slice(image_1xHxWxC, (0, y0, x0, 0), (1, h, w, image_1xHxWxC.shape[-1]))


def _stats_into(obj, geometry, vgg_params, acc, image, targets, y0, x0):
    crop = _crop(image, geometry, y0, x0)
    stats = _crop_stats(obj, geometry, vgg_params, crop, targets, y0, x0)
    return jax.tree.map(jnp.add, acc, stats)


def _loss_from_stats(obj, hws, stats, image_1xHxWxC, targets, weights):
    """(total, parts) of the whole image from its sums (pixel terms read the image)."""
    pixels = objective.grey_to_rgb(image_1xHxWxC)

    def layer_value(i, j, layer, key):
        t = obj.terms[i]
        kind = registry.get(t.kind)
        if layer is None:
            return kind.loss(pixels, None, key, **t.option_dict())
        return kind.tile_loss(stats[i][layer], targets[i][layer], hws[layer], **t.option_dict())

    return objective.combine(obj, weights, jax.random.PRNGKey(0), layer_value)


def _loss_and_grads(obj, hws, stats, image, targets, weights):
    """The loss, its record, dL/dS and the pixel terms' gradient (the accumulator)."""
    f = functools.partial(_loss_from_stats, obj, hws)
    (total, parts), (g_stats, g_image) = jax.value_and_grad(f, (0, 1), has_aux=True)(
        stats, image, targets, weights
    )
    return total, objective.record(total, parts), g_stats, g_image


def _grad_into(obj, geometry, vgg_params, acc, image, targets, g_stats, y0, x0):
    """``acc`` plus this tile's share of the gradient: the VJP of its sums with g."""

    def contribution(crop):
        stats = _crop_stats(obj, geometry, vgg_params, crop, targets, y0, x0)
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
    """:class:`nstjax.optim.ChunkRunner`'s interface for a tiled step: compiles the
    stats and gradient programs of each tile geometry (first, inner, near-last and
    last rows and columns: at most 16), the loss program
    and the optimizer update once; ``state, records = runner(state, n, ctx)``."""

    def __init__(self, obj, opt, tile: int, state: dict, ctx: dict):
        supported(obj)
        if opt.line_search:
            raise UsageError("tiles take no line search (it evaluates whole images)")
        self.loop, self.obj, self.opt = "host", obj, opt
        _, _, h, w, _ = state["image"].shape
        self.tiles = grid(h, w, tile, vgg.halo(obj.layers, ALIGN))
        self.hws = {
            layer: objective.feature_hw(layer, (h, w), obj.ceil_mode) for layer in obj.layers
        }
        options = xla_flags.step_compiler_options(jax.default_backend())
        image, targets = state["image"], ctx["runs"]["targets"]
        vgg_params, zero = ctx["vgg"], jnp.int32(0)
        t0 = time.perf_counter()
        shapes = jax.eval_shape(
            _batched(functools.partial(_crop_stats_full, obj, self.tiles[0].geometry),
                     (None, 0, 0, None, None)),
            vgg_params, image, targets, zero, zero,
        )  # fmt: skip
        self._zero_stats = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        acc = self._zero_stats()
        self._stats, self._grad = {}, {}
        for geometry in dict.fromkeys(t.geometry for t in self.tiles):
            into = _batched(functools.partial(_stats_into, obj, geometry),
                            (None, 0, 0, 0, None, None))  # fmt: skip
            self._stats[geometry] = (
                jax.jit(into, donate_argnums=(1,))
                .lower(vgg_params, acc, image, targets, zero, zero)
                .compile(options)
            )
            grad = _batched(functools.partial(_grad_into, obj, geometry),
                            (None, 0, 0, 0, 0, None, None))  # fmt: skip
            self._grad[geometry] = (
                jax.jit(grad, donate_argnums=(1,))
                .lower(vgg_params, image, image, targets, acc, zero, zero)
                .compile(options)
            )
        loss = _batched(functools.partial(_loss_and_grads, obj, self.hws), (0, 0, 0, 0))
        self._loss = jax.jit(loss).lower(acc, image, targets, ctx["runs"]["weights"]).compile()
        update = _batched(functools.partial(optim.update, opt), (0, 0, 0, 0))
        self._update = jax.jit(update, donate_argnums=(0,))
        self.compile_seconds = time.perf_counter() - t0

    def loss_and_grad(self, image, ctx):
        """(total_R, record_RxK, grad) of a batch of images, tile by tile."""
        targets = ctx["runs"]["targets"]
        stats = self._zero_stats()
        for t in self.tiles:
            stats = self._stats[t.geometry](ctx["vgg"], stats, image, targets, t.y0, t.x0)
        total, rec, g_stats, grad = self._loss(stats, image, targets, ctx["runs"]["weights"])
        for t in self.tiles:
            grad = self._grad[t.geometry](ctx["vgg"], grad, image, targets, g_stats, t.y0, t.x0)
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
        """Records at the written image (rounded, clipped), as :func:`optim.final_losses`."""
        image_R = jnp.clip(jnp.round(image_R), 0.0, 255.0)
        targets = ctx["runs"]["targets"]
        stats = self._zero_stats()
        for t in self.tiles:
            stats = self._stats[t.geometry](ctx["vgg"], stats, image_R, targets, t.y0, t.x0)
        return np.asarray(self._loss(stats, image_R, targets, ctx["runs"]["weights"])[1])


def _crop_stats_full(obj, geometry, vgg_params, image, targets, y0, x0):
    return _crop_stats(obj, geometry, vgg_params, _crop(image, geometry, y0, x0), targets, y0, x0)
