"""Convolutions of the fast network, arranged for XLA's CPU backend.

Each function computes the same sums as one plain convolution (of the reflect-padded,
upsampled image for :func:`upsample_conv3`), in an order that XLA:CPU runs 2-4x
faster on the layers concerned (:func:`conv`'s docstring); :mod:`nstjax.arbitrary.nets`
builds the networks from them. Pure JAX (no Flax), NHWC x HWIO, unpadded ("VALID").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """Reflect-pads height and width of an NHWC batch (TF ``MirrorPad`` REFLECT)."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


BAND_PIXELS = 4096
"""Output pixels per band when :func:`conv` splits a convolution into row bands."""
MAX_BANDS = 16


def conv_valid(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """XLA's own unpadded NHWC x HWIO convolution."""
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def space_to_depth_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Unpadded stride-1 convolution with an odd ``k x k`` kernel, computed on 2x2 blocks.

    With ``x'[u, v, (a, b, c)] = x[2u + a, 2v + b, c]`` (space to depth), output pixel
    ``(2p + r, 2q + s)`` is ``sum x'[p + m, q + n, (a, b, c)] k[2m + a - r, 2n + b - s, c]``
    over ``m, n < (k + 1) / 2``: one ``(k + 1)/2``-square convolution of ``x'`` (4C
    channels) into 4 x O channels, then depth to space. The same sums in another order;
    on XLA:CPU it runs the transformer's 9x9 layers 3x faster (8 -> 3 channels at 384 px:
    14.6 against 4.9 ms; 3 -> 8: 9.7 against 3.3 ms), whose few channels leave the
    library convolution mostly idle.
    """
    kh, kw, c, o = kernel.shape
    b, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    m = (kh + 1) // 2
    hb, wb = -(-ho // 2) + m - 1, -(-wo // 2) + m - 1  # blocks of x' the outputs read
    x = jnp.pad(x, ((0, 0), (0, 2 * hb - h), (0, 2 * wb - w), (0, 0)))
    x = x.reshape(b, hb, 2, wb, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hb, wb, 4 * c)
    # kernel'[m, n, (a, b, c), (r, s, o)] = k[2m + a - r, 2n + b - s] (zero outside)
    padded = jnp.pad(kernel, ((1, 2 * m - kh), (1, 2 * m - kw), (0, 0), (0, 0)))
    tap = np.arange(m)[:, None, None] * 2 + np.arange(2)[:, None] - np.arange(2) + 1  # m, a, r
    k2 = padded[tap[:, :, :, None, None, None], tap[None, None, None]]  # m a r n b s c o
    k2 = k2.transpose(0, 3, 1, 4, 6, 2, 5, 7).reshape(m, m, 4 * c, 4 * o)
    y = conv_valid(x, k2, 1).reshape(b, hb - m + 1, wb - m + 1, 2, 2, o)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * (hb - m + 1), 2 * (wb - m + 1), o)
    return y[:, :ho, :wo]


def conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """Unpadded ("VALID") NHWC x HWIO convolution, arranged for XLA's CPU backend.

    The result is that of one convolution; three rearrangements only make it
    faster on CPU (measured 2-4x on the layers concerned):

    * 3x3 convolutions with 16 or more input channels run in bands of rows of
      about :data:`BAND_PIXELS` output pixels (at most :data:`MAX_BANDS`);
      on whole large images XLA's library convolution slows down severalfold.
    * stride-1 kernels of 5x5 and more (the 9x9 layers) run on 2x2 blocks
      (:func:`space_to_depth_conv`).
    * otherwise, fewer than 8 output channels are padded with zero filters and cut
      off again, which moves a small convolution onto the library path.
    """
    kh, kw, cin, cout = kernel.shape
    if stride == 1 and kh == kw and kh % 2 == 1 and kh >= 5:
        return space_to_depth_conv(x, kernel)
    if cout < 8:
        kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, 8 - cout)))
    b, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    rows = max(1, BAND_PIXELS // (b * wo), -(-ho // MAX_BANDS))
    if kh * kw * cin < 144 or rows >= ho:
        return conv_valid(x, kernel, stride)[..., :cout]
    bands = [
        conv_valid(x[:, r * stride : (min(ho, r + rows) - 1) * stride + kh], kernel, stride)
        for r in range(0, ho, rows)
    ]
    return jnp.concatenate(bands, axis=1)[..., :cout]


# _PHASE_TAPS[p, t, i]: tap t of a 3-tap filter applied to a x2 nearest-upsampled,
# reflect-padded signal lands, for output phase p (even or odd position), on tap i
# of a filter applied to the edge-padded signal at the input resolution.
_PHASE_TAPS = (((1, 0, 0), (0, 1, 0), (0, 1, 0)), ((0, 1, 0), (0, 1, 0), (0, 0, 1)))


def upsample_conv3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 convolution of the x2 nearest-upsampled, reflect-padded image, at low resolution.

    ``x`` is the low-resolution input edge-padded by 1; the result equals
    ``conv(reflect_pad(up(x[:, 1:-1, 1:-1]), 1), kernel)`` with ``up`` the x2
    nearest-neighbour upsampling. Each of the four output phases is a 3x3
    convolution of ``x``, so the work is one convolution with four times the
    output channels on a quarter of the pixels, then a depth-to-space shuffle;
    nothing is computed on the upsampled image.
    """
    b, h, w, _ = x.shape
    cin, cout = kernel.shape[2:]
    taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)
    phases = jnp.einsum("pti,qsj,tsco->ijcpqo", taps, taps, kernel).reshape(3, 3, cin, 4 * cout)
    y = conv(x, phases).reshape(b, h - 2, w - 2, 2, 2, cout)
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * (h - 2), 2 * (w - 2), cout)
