"""The VGG19 network in Flax: ``Conv3x3``, ``VGG19`` and :func:`features`.

Layer names, parameter shapes and pooling are :mod:`nstjax.vgg`'s (which imports no
Flax, so that the settings schema and the fast network's command do not pay Flax's
import). The weights are a params pytree passed to :func:`features` as an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nstjax import conv
from nstjax.errors import UsageError
from nstjax.vgg import LAYER_INDEX, LAYERS, PARAM_SHAPES, POOLINGS, check_layers, pool2x2


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
      ceil_mode: Caffe's pooling of odd-sized maps (see :func:`pool2x2`); default floor.
    """

    layers: tuple[str, ...]
    pooling: str = "max"
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "xla"
    ceil_mode: bool = False

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
                x = pool2x2(x, self.pooling, self.ceil_mode)
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
    ceil_mode: bool = False,
) -> dict[str, jax.Array]:
    """Activations of ``layers`` for a preprocessed NHWC batch.

    ``params`` may hold more layers than needed: only those up to the deepest
    requested layer are used. ``ceil_mode=True``: Caffe's pooling of odd-sized maps.
    """
    layers = check_layers(layers)
    last = max(LAYER_INDEX[name] for name in layers)
    needed = {n: params[n] for n in LAYERS[: last + 1] if n in PARAM_SHAPES}
    model = VGG19(
        layers=layers, pooling=pooling, dtype=dtype, conv_impl=conv_impl, ceil_mode=ceil_mode
    )
    return model.apply({"params": needed}, image_BxHxWx3)
