"""VGG19 feature extractor in Flax (NHWC), layer names as in Gatys et al.

Layers are ``conv{b}_{i}`` (pre-activation), ``relu{b}_{i}`` and ``pool{b}``.
Caffe applies ReLU in place, so the paper's "conv4_2" response is, strictly,
our ``relu4_2``; both are selectable.

The weights are a params pytree ``{"conv1_1": {"kernel": HWIO, "bias": O}, ...}``
passed to :func:`features` as an argument, so they are never baked into a
compiled program as constants. Only the layers up to the deepest requested one
are computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nstjax import conv
from nstjax.errors import UsageError

# (block, number of convs, output channels)
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))


def _build_tables():
    layers, shapes = [], {}
    cin = 3
    for block, n, cout in _BLOCKS:
        for i in range(1, n + 1):
            name = f"conv{block}_{i}"
            layers += [name, f"relu{block}_{i}"]
            shapes[name] = {"kernel": (3, 3, cin, cout), "bias": (cout,)}
            cin = cout
        layers.append(f"pool{block}")
    return tuple(layers), shapes


LAYERS, PARAM_SHAPES = _build_tables()
"""All layer names in forward order, and the shape of every parameter."""

CONV_LAYERS = tuple(PARAM_SHAPES)
LAYER_INDEX = {name: i for i, name in enumerate(LAYERS)}
POOLINGS = ("max", "avg")


def check_layers(names: Sequence[str], what: str = "layer") -> tuple[str, ...]:
    """Validates layer names; returns them as a tuple. Raises UsageError."""
    names = tuple(names)
    for name in names:
        if name not in LAYER_INDEX:
            raise UsageError(
                f"unknown {what} {name!r}; known layers are conv1_1..conv5_4, "
                "relu1_1..relu5_4 and pool1..pool5"
            )
    return names


def channels(layer: str) -> int:
    """Number of channels of a layer's output."""
    conv = "conv" + layer[4:] if layer.startswith("relu") else layer
    if conv.startswith("pool"):
        block = int(conv[4:])
        conv = [c for c in CONV_LAYERS if c.startswith(f"conv{block}_")][-1]
    return PARAM_SHAPES[conv]["kernel"][-1]


def downsampling(layer: str) -> int:
    """How many times the spatial size was halved before this layer's output."""
    index = LAYER_INDEX[layer]
    return sum(1 for name in LAYERS[: index + 1] if name.startswith("pool"))


class Conv3x3(nn.Module):
    """3x3 'SAME' convolution with params ``kernel`` (HWIO) and ``bias``.

    An optional param ``winograd`` (from :func:`prepare_params`) holds the kernel's
    Winograd transforms, used when ``impl`` picks Winograd for this input shape.
    """

    features: int
    impl: str = "xla"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        prepared = None
        if self.has_variable("params", "winograd") and self.dtype == jnp.float32:
            prepared = self.get_variable("params", "winograd")
        return conv.conv3x3(
            x, kernel.astype(self.dtype), bias.astype(self.dtype), self.impl, prepared
        )


class VGG19(nn.Module):
    """VGG19 trunk that returns the requested activations by name.

    Attributes:
      layers: names of the activations to return (static).
      pooling: "max" or "avg" (the paper used average pooling).
      dtype: computation dtype (parameters stay float32).
      conv_impl: a key of ``nstjax.conv.CONV_IMPLS``.
    """

    layers: tuple[str, ...]
    pooling: str = "max"
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, image_BxHxWx3: jax.Array) -> dict[str, jax.Array]:
        wanted = set(check_layers(self.layers))
        if not wanted:
            raise UsageError("no layers requested")
        if self.pooling not in POOLINGS:
            raise UsageError(f"unknown pooling {self.pooling!r}; use one of {POOLINGS}")
        last = max(LAYER_INDEX[name] for name in wanted)
        out = {}
        x = image_BxHxWx3.astype(self.dtype)
        for name in LAYERS[: last + 1]:
            if name.startswith("conv"):
                cout = PARAM_SHAPES[name]["bias"][0]
                x = Conv3x3(cout, self.conv_impl, self.dtype, name=name)(x)
            elif name.startswith("relu"):
                x = nn.relu(x)
            else:
                x = conv.pool2x2(x, self.pooling)
            if name in wanted:
                out[name] = x
        return out


def features(
    params: Mapping,
    image_BxHxWx3: jax.Array,
    layers: Sequence[str],
    pooling: str = "max",
    dtype=jnp.float32,
    conv_impl: str = "xla",
) -> dict[str, jax.Array]:
    """Activations of ``layers`` for a preprocessed NHWC batch.

    ``params`` may hold more layers than needed: only those up to the deepest
    requested layer are used.
    """
    layers = check_layers(layers)
    last = max(LAYER_INDEX[name] for name in layers)
    needed = {n: params[n] for n in LAYERS[: last + 1] if n in PARAM_SHAPES}
    model = VGG19(layers=layers, pooling=pooling, dtype=dtype, conv_impl=conv_impl)
    return model.apply({"params": needed}, image_BxHxWx3)


def prepare_params(
    params: Mapping, image_shape: Sequence[int], layers: Sequence[str], conv_impl: str
) -> dict:
    """``params`` plus, for every conv layer that ``conv_impl`` runs as Winograd at this
    image shape (B, H, W, C), its transformed kernels (param ``winograd``).

    Style transfer evaluates the same VGG hundreds of times, so the transforms are made
    once here instead of in every step. Layers past the deepest of ``layers`` are
    dropped. Jit-compatible; :func:`prepare_params_jit` is the compiled version.
    """
    layers = check_layers(layers)
    last = max(LAYER_INDEX[name] for name in layers)
    h, w = image_shape[1], image_shape[2]
    out = {}
    for name in LAYERS[: last + 1]:
        if name.startswith("pool"):
            h, w = h // 2, w // 2
        elif name in PARAM_SHAPES:
            entry = {"kernel": params[name]["kernel"], "bias": params[name]["bias"]}
            m = conv.tile_size(conv_impl, h, w, *PARAM_SHAPES[name]["kernel"][2:])
            if m:
                entry["winograd"] = conv.prepare_kernel(entry["kernel"], m)
            out[name] = entry
    return out


prepare_params_jit = jax.jit(prepare_params, static_argnums=(1, 2, 3))


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
