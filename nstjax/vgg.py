"""VGG19's layers, pooling and parameters (NHWC), layer names as in Gatys et al.

The network itself, in Flax, is :mod:`nstjax.vgg_net` (``VGG19``, ``features``);
this module holds what needs no Flax: the layer table and map sizes (re-exported from
:mod:`nstjax.vgg_layers`, which needs no JAX either: the settings schema imports it),
pooling, the rematerialized forward and the Winograd kernel preparation.

Layers are ``conv{b}_{i}`` (pre-activation), ``relu{b}_{i}`` and ``pool{b}``.
Caffe applies ReLU in place, so the paper's "conv4_2" response is, strictly,
our ``relu4_2``; both are selectable.

The weights are a params pytree ``{"conv1_1": {"kernel": HWIO, "bias": O}, ...}``
passed to :func:`nstjax.vgg_net.features` as an argument, so they are never baked into a
compiled program as constants. Only the layers up to the deepest requested one
are computed.

Pooling is 2x2 with stride 2. By default an odd-sized map drops its last row or
column (floor rounding, the historical behaviour here). ``ceil_mode=True`` gives
Caffe's rounding, as in the original VGG19: the output has ceil(n / 2) rows and
columns, and a border window that sticks out of the map is clipped to it, so max
pooling takes the maximum of the valid elements and average pooling divides by
their number (Caffe's ``PoolingLayer::Forward_cpu``, BVLC/caffe
src/caffe/layers/pooling_layer.cpp: with ``pad = 0``, ``pool_size`` is computed
from ``hend = min(hstart + kernel, height)``). :func:`feature_hw` gives the map
size of any layer in either mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import conv, xla_flags
from nstjax.vgg_layers import (  # noqa: F401  (re-exported: vgg.LAYERS, vgg.halo, ...)
    CONV_LAYERS,
    LAYER_INDEX,
    LAYERS,
    PARAM_SHAPES,
    POOLINGS,
    channels,
    check_layers,
    downsampling,
    feature_hw,
    halo,
    pooled_size,
    receptive_radius,
)


def pool2x2(x_BxHxWxC: jax.Array, kind: str, ceil_mode: bool = False) -> jax.Array:
    """2x2/2 max or average pooling; ``ceil_mode`` keeps odd borders as Caffe does.

    Even-sized maps (and every map with ``ceil_mode=False``) take exactly
    :func:`nstjax.conv.pool2x2`, a reshape and a reduction. An odd map in ceil mode is
    padded to even first: with -inf for max pooling (a padded element never wins, and
    its gradient is dropped), with zeros for average pooling, whose window sums are
    then divided by the number of valid elements (4, 2 at the last row or column, 1
    at the corner).
    """
    b, h, w, c = x_BxHxWxC.shape
    ph, pw = (h % 2, w % 2) if ceil_mode else (0, 0)
    if not (ph or pw):
        return conv.pool2x2(x_BxHxWxC, kind)
    pad = ((0, 0), (0, ph), (0, pw), (0, 0))
    if kind == "max":
        x = jnp.pad(x_BxHxWxC, pad, constant_values=-jnp.inf)
        return conv.pool2x2(x, "max")
    x = jnp.pad(x_BxHxWxC, pad)
    ho, wo = (h + ph) // 2, (w + pw) // 2
    sums = jnp.sum(x.reshape(b, ho, 2, wo, 2, c), axis=(2, 4))
    rows = np.full(ho, 2.0, np.float32)
    cols = np.full(wo, 2.0, np.float32)
    rows[-1] -= ph
    cols[-1] -= pw
    inv_counts = (1.0 / np.outer(rows, cols))[None, :, :, None]
    return sums * jnp.asarray(inv_counts, sums.dtype)


def features_remat(
    params: Mapping,
    image_BxHxWx3: jax.Array,
    layers: Sequence[str],
    pooling: str = "max",
    conv_impl: str = "xla",
    ceil_mode: bool = False,
) -> dict[str, jax.Array]:
    """:func:`nstjax.vgg_net.features` with each VGG block rematerialized (``jax.checkpoint``): the
    backward pass keeps only every block's input (a pooled map, 4x smaller than the
    block's activations) and the requested layers, and recomputes one block at a time.
    Same values; about one more forward per gradient; activation memory of the largest
    block instead of the whole network."""
    wanted = set(check_layers(layers))
    last = max(LAYER_INDEX[name] for name in wanted)
    blocks: list[list[str]] = [[]]
    for name in LAYERS[: last + 1]:
        blocks[-1].append(name)
        if name.startswith("pool"):
            blocks.append([])
    out: dict[str, jax.Array] = {}
    x = image_BxHxWx3
    for names in filter(None, blocks):
        convs = [n for n in names if n in PARAM_SHAPES]

        def block(p, x, names=tuple(names)):
            got = {}
            for name in names:
                if name in PARAM_SHAPES:
                    e = p[name]
                    x = conv.conv3x3(x, e["kernel"], e["bias"], conv_impl, e.get("winograd"))
                elif name.startswith("relu"):
                    x = jax.nn.relu(x)
                else:
                    x = pool2x2(x, pooling, ceil_mode)
                if name in wanted:
                    got[name] = x
            return x, got

        x, got = jax.checkpoint(block)({n: params[n] for n in convs}, x)
        out.update(got)
    return out


def params_to(params: Mapping, layers: Sequence[str]) -> dict:
    """The entries of ``params`` up to the deepest conv layer that ``layers`` need (a new
    dict of the same arrays): the rest need not stay in memory (conv5_2..conv5_4, 27 MiB,
    for the Gatys layers)."""
    last = max(LAYER_INDEX[name] for name in check_layers(layers))
    return {name: params[name] for name in LAYERS[: last + 1] if name in PARAM_SHAPES}


def _winograd_layers(
    image_shape: Sequence[int], layers: Sequence[str], conv_impl: str, ceil_mode: bool
) -> dict[str, int]:
    """``{conv layer: tile size}`` of the layers up to the deepest of ``layers`` that
    ``conv_impl`` runs as Winograd at this image shape (B, H, W, C)."""
    layers = check_layers(layers)
    last = max(LAYER_INDEX[name] for name in layers)
    h, w = image_shape[1], image_shape[2]
    out = {}
    for name in LAYERS[: last + 1]:
        if name.startswith("pool"):
            h, w = pooled_size(h, ceil_mode), pooled_size(w, ceil_mode)
        elif name in PARAM_SHAPES:
            m = conv.tile_size(conv_impl, h, w, *PARAM_SHAPES[name]["kernel"][2:])
            if m:
                out[name] = m
    return out


def _transforms(params, image_shape, layers, conv_impl, ceil_mode) -> dict:
    tiles = _winograd_layers(image_shape, layers, conv_impl, ceil_mode)
    return {name: conv.prepare_kernel(params[name]["kernel"], m) for name, m in tiles.items()}


_transforms_jit = jax.jit(
    _transforms,
    # runs once per run: 0.30-0.33 s to compile at 256x192 against 0.52-0.81 s, as fast
    compiler_options=xla_flags.one_off_compiler_options(),
    static_argnums=(1, 2, 3, 4),
)


def _assemble(params: Mapping, layers: Sequence[str], transforms: Mapping) -> dict:
    out = {name: {"kernel": e["kernel"], "bias": e["bias"]}
           for name, e in params_to(params, layers).items()}  # fmt: skip
    for name, u in transforms.items():
        out[name]["winograd"] = u
    return out


def _preparer(transforms: Callable, doc: str) -> Callable:
    def prepare(
        params: Mapping,
        image_shape: Sequence[int],
        layers: Sequence[str],
        conv_impl: str,
        ceil_mode: bool = False,
    ) -> dict:
        t = transforms(params, tuple(image_shape), tuple(layers), conv_impl, ceil_mode)
        return _assemble(params, layers, t)

    prepare.__doc__ = doc
    return prepare


prepare_params = _preparer(
    _transforms,
    """``params`` plus, for every conv layer that ``conv_impl`` runs as Winograd at this
    image shape (B, H, W, C), its transformed kernel (param ``winograd``).
    ``ceil_mode`` must be the pooling rounding the features will use (it decides the
    layers' sizes, hence the policy's choices).

    Style transfer evaluates the same VGG hundreds of times, so the transforms are made
    once here instead of in every step. Layers past the deepest of ``layers`` are
    dropped. Jit-compatible; :func:`prepare_params_jit` is the compiled version.
    """,
)
prepare_params_jit = _preparer(
    _transforms_jit,
    """:func:`prepare_params` with the transforms compiled; the kernels and biases are
    ``params``' own arrays, not copies (a jitted function's outputs are new buffers:
    49.5 MiB of VGG19's kernels to conv5_1 held twice).""",
)


def _transform_shapes(params, image_shape, layers, conv_impl, ceil_mode) -> dict:
    sharding = jax.tree.leaves(params)[0].sharding  # committed, replicated: kept
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding, weak_type=x.weak_type),
        _transforms_jit.eval_shape(params, image_shape, layers, conv_impl, ceil_mode),
    )


prepared_shapes = _preparer(
    _transform_shapes,
    """:func:`prepare_params_jit`'s result with each transformed kernel as a
    ``jax.ShapeDtypeStruct``: traced, neither compiled nor run (the trace is the one the
    real call reuses). What a compile child needs to know of them (:mod:`nstjax.engine`).
    ``params`` are committed to one sharding (replicated), which the transforms keep.""",
)


def init_params(rng: jax.Array) -> dict:
    """Random parameters of the canonical shapes (for tests and shape checks)."""
    params = {}
    for i, (name, shapes) in enumerate(PARAM_SHAPES.items()):
        k = jax.random.fold_in(rng, i)
        fan_in = shapes["kernel"][0] * shapes["kernel"][1] * shapes["kernel"][2]
        params[name] = {
            "kernel": jax.random.normal(k, shapes["kernel"]) * jnp.sqrt(2.0 / fan_in),
            "bias": jnp.zeros(shapes["bias"]),
        }
    return params
