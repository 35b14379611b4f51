"""3x3 'SAME' convolutions (NHWC x HWIO), with selectable implementations.

VGG19 spends nearly all its time in 3x3 convolutions, so how they are computed
decides the speed of style transfer. Implementations live in an explicit
registry; all compute the same function (to float32 rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from nstjax.errors import UsageError


def conv_xla(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array) -> jax.Array:
    """XLA's own convolution."""
    return jax.lax.conv_general_dilated(
        x_BxHxWxC, kernel_3x3xCxO, window_strides=(1, 1), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


CONV_IMPLS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "xla": conv_xla,
}


def check_impl(name: str) -> str:
    if name not in CONV_IMPLS:
        raise UsageError(f"unknown convolution implementation {name!r}; use one of "
                         f"{sorted(CONV_IMPLS)}")
    return name


def conv3x3(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array, bias_O: jax.Array,
            impl: str = "xla") -> jax.Array:
    return CONV_IMPLS[check_impl(impl)](x_BxHxWxC, kernel_3x3xCxO) + bias_O


def pool2x2(x_BxHxWxC: jax.Array, kind: str) -> jax.Array:
    """2x2/2 max or average pooling (odd sizes floor, as in Caffe's VGG with even inputs).

    Written as a reshape and a reduction: its gradient is a broadcast, much faster
    on CPU than the gradient of ``reduce_window`` (select-and-scatter, windowed sums).
    """
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC[:, : h - h % 2, : w - w % 2, :].reshape(b, h // 2, 2, w // 2, 2, c)
    return jnp.max(x, axis=(2, 4)) if kind == "max" else jnp.mean(x, axis=(2, 4))
