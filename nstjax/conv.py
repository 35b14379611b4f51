"""3x3 'SAME' convolutions (NHWC x HWIO) and 2x2 pooling, with selectable algorithms.

VGG19 spends nearly all its time in 3x3 convolutions, so how they are computed
decides the speed of style transfer. :data:`CONV_IMPLS` is an explicit registry of
*tile policies*: given a layer's input height and width and its input and output
channels, a policy picks XLA's own convolution (``0``) or Winograd F(m x m, 3 x 3)
(``m``, see :mod:`nstjax.winograd`). All compute the same function to float32 rounding.

Winograd layers run fastest with kernels transformed once per run
(:func:`prepare_kernel`, done by :func:`nstjax.vgg.prepare_params`); without them
the transform runs inside every call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nstjax import winograd
from nstjax.conv_policy import (  # noqa: F401  (re-exported: conv.CONV_IMPLS, ...)
    AUTO_F3_MAX_PIXELS,
    AUTO_F3_MIN_CHANNELS,
    AUTO_MIN_CHANNELS,
    CONV_IMPLS,
    DEFAULT_IMPL,
    Policy,
    check_impl,
    tile_size,
)


def conv_xla(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array) -> jax.Array:
    """XLA's own convolution."""
    return jax.lax.conv_general_dilated(
        x_BxHxWxC,
        kernel_3x3xCxO,
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def prepare_kernel(kernel_3x3xCxO: jax.Array, m: int) -> jax.Array:
    """The transformed kernel (``(m+2)^2 x C x O``) of a layer that runs Winograd
    F(m x m, 3 x 3); the backward pass uses it too."""
    return winograd.kernel_transform(kernel_3x3xCxO, m)


def convolve(
    x_BxHxWxC: jax.Array,
    kernel_3x3xCxO: jax.Array,
    impl: str = "xla",
    prepared: jax.Array | None = None,
) -> jax.Array:
    """3x3 'SAME' convolution by the algorithm ``impl`` picks for this shape.

    ``prepared``: :func:`prepare_kernel` output; used when its tile size is the one
    picked (its gradient w.r.t. the kernel is then zero), else ignored.
    """
    _, h, w, c = x_BxHxWxC.shape
    m = tile_size(impl, h, w, c, kernel_3x3xCxO.shape[3])
    if m == 0:
        return conv_xla(x_BxHxWxC, kernel_3x3xCxO)
    if prepared is not None and prepared.shape[0] == (m + 2) ** 2:
        return winograd.conv_pretransformed(x_BxHxWxC, prepared, m)
    return winograd.conv_winograd(x_BxHxWxC, kernel_3x3xCxO, m)


def conv3x3(
    x_BxHxWxC: jax.Array,
    kernel_3x3xCxO: jax.Array,
    bias_O: jax.Array,
    impl: str = "xla",
    prepared: jax.Array | None = None,
) -> jax.Array:
    return convolve(x_BxHxWxC, kernel_3x3xCxO, impl, prepared) + bias_O


def pool2x2(x_BxHxWxC: jax.Array, kind: str) -> jax.Array:
    """2x2/2 max or average pooling (odd sizes floor, as in Caffe's VGG with even inputs).

    Written as a reshape and a reduction: its gradient is a broadcast, much faster
    on CPU than the gradient of ``reduce_window`` (select-and-scatter, windowed sums).
    """
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC[:, : h - h % 2, : w - w % 2, :].reshape(b, h // 2, 2, w // 2, 2, c)
    return jnp.max(x, axis=(2, 4)) if kind == "max" else jnp.mean(x, axis=(2, 4))
