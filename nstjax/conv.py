"""3x3 'SAME' convolutions (NHWC x HWIO), with selectable implementations.

VGG19 spends nearly all its time in 3x3 convolutions, so how they are computed
decides the speed of style transfer. Implementations live in an explicit
registry; all compute the same function (to float32 rounding).

Besides XLA's own convolution there is Winograd minimal filtering (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", 2015), F(m x m, 3 x 3):
each (m+2) x (m+2) input tile and the kernel are taken to a transform domain of
(m+2)^2 points, where the convolution becomes one matrix product per point over
the channels, and the products are taken back to an m x m output tile. That
needs 9 m^2 / (m+2)^2 times fewer multiplications than direct convolution (2.25x
for m = 2, 4x for m = 4). It is written in plain JAX, so autodiff gives the
input gradient as Winograd too (a custom VJP: the input gradient of a 3x3 'SAME'
convolution is a 3x3 'SAME' convolution with the flipped kernel). Transforms are
small matrix products (einsum with constant matrices): cheaper to compile than
elementwise combinations of slices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from nstjax.errors import UsageError

Matrix = tuple[tuple[float, ...], ...]


def conv_xla(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array) -> jax.Array:
    """XLA's own convolution."""
    return jax.lax.conv_general_dilated(
        x_BxHxWxC,
        kernel_3x3xCxO,
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def toom_cook(points: Sequence[float], m: int, r: int = 3) -> tuple[Matrix, Matrix, Matrix]:
    """Winograd matrices ``(A^T, G, B^T)`` of F(m, r) for finite ``points`` and infinity.

    1-D correlation ``y[k] = sum_j g[j] d[k + j]`` of an ``m + r - 1`` input tile
    ``d`` is then ``y = A^T ((G g) * (B^T d))``. ``A^T`` evaluates at the points
    and ``G`` interpolates with Lagrange weights (exact rationals); ``B^T`` is the
    unique solution of the linear identity above, solved in float64 and checked.
    """
    n = m + r - 1
    if len(points) != n - 1 or len(set(points)) != n - 1:
        raise ValueError(f"F({m},{r}) needs {n - 1} distinct finite points, got {points}")
    pts = [Fraction(p) for p in points]
    at = [[p**k for p in pts] + [Fraction(k == m - 1)] for k in range(m)]
    g = []
    for i, p in enumerate(pts):
        denominator = Fraction(1)
        for j, q in enumerate(pts):
            denominator *= p - q if j != i else 1
        g.append([p**k / denominator for k in range(r)])
    g.append([Fraction(k == r - 1) for k in range(r)])
    # Unknown B^T[i, q]: for all k, j, q, sum_i A^T[k, i] G[i, j] B^T[i, q] = [q == k + j].
    # Solved in float64, snapped to small rationals and checked exactly.
    system = np.zeros((m, r, n, n, n))
    rhs = np.zeros((m, r, n))
    for k in range(m):
        for j in range(r):
            rhs[k, j, k + j] = 1.0
            for q in range(n):
                system[k, j, q, :, q] = [float(at[k][i] * g[i][j]) for i in range(n)]
    solution = np.linalg.lstsq(system.reshape(-1, n * n), rhs.ravel(), rcond=None)[0]
    bt = [
        [Fraction(float(v)).limit_denominator(1 << 12) for v in solution[i * n : i * n + n]]
        for i in range(n)
    ]
    for k in range(m):
        for j in range(r):
            for q in range(n):
                if sum(at[k][i] * g[i][j] * bt[i][q] for i in range(n)) != (q == k + j):
                    raise ValueError(f"no Winograd transform for points {points}")

    def as_tuple(a):
        return tuple(tuple(float(v) for v in row) for row in a)

    return as_tuple(at), as_tuple(g), as_tuple(bt)


WINOGRAD_POINTS: dict[int, tuple[float, ...]] = {
    2: (0.0, 1.0, -1.0),
    4: (0.0, 1.0, -1.0, 0.5, -0.5),
}
"""Finite interpolation points of F(m x m, 3 x 3) (plus infinity), by output tile size m.

For m = 4, +-1/2 keep float32 errors as small as Lavin & Gray's +-2 do (both a few
1e-6 of the output's range, see tests/test_conv.py), with smaller transform entries.
"""


@functools.cache
def winograd_matrices(m: int) -> tuple[Matrix, Matrix, Matrix]:
    """``(A^T, G, B^T)`` of F(m x m, 3 x 3) with :data:`WINOGRAD_POINTS`."""
    return toom_cook(WINOGRAD_POINTS[m], m)


def kernel_transform(kernel_3x3xCxO: jax.Array, m: int) -> jax.Array:
    """``G k G^T`` for every (input, output) channel pair: ``(m+2)^2 x C x O``.

    Two small matrix products over the 3x3 taps; it runs on every call (the kernel is
    an argument, not a constant), which costs little next to the convolution.
    """
    g = np.asarray(winograd_matrices(m)[1], np.float32)
    u = jnp.einsum("ua,vb,abco->uvco", g, g, kernel_3x3xCxO)
    return u.reshape((m + 2) ** 2, *kernel_3x3xCxO.shape[2:])


def _tiles(x: jax.Array, axis: int, count: int, m: int, n: int) -> jax.Array:
    """``count`` overlapping windows of size ``n`` at stride ``m`` along ``axis``, as a new
    axis of size ``n`` after it (``x`` has ``(count + 1) m`` entries along ``axis``)."""
    shape = x.shape

    def blocks(start: int) -> jax.Array:
        part = jax.lax.slice_in_dim(x, start, start + count * m, axis=axis)
        return part.reshape(shape[:axis] + (count, m) + shape[axis + 1 :])

    overlap = jax.lax.slice_in_dim(blocks(m), 0, n - m, axis=axis + 1)
    return jnp.concatenate([blocks(0), overlap], axis=axis + 1)


def _winograd_forward(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array, m: int) -> jax.Array:
    at, _, bt = (np.asarray(a, np.float32) for a in winograd_matrices(m))
    n = m + 2
    b, h, w, c = x_BxHxWxC.shape
    o = kernel_3x3xCxO.shape[-1]
    th, tw = -(-h // m), -(-w // m)
    x = jnp.pad(x_BxHxWxC, ((0, 0), (1, (th + 1) * m - h - 1), (1, (tw + 1) * m - w - 1), (0, 0)))
    tiles = _tiles(_tiles(x, 1, th, m, n), 3, tw, m, n)  # B, th, n, tw, n, C
    v_TxPxC = jnp.einsum("ua,vb,Bhawbc->uvBhwc", bt, bt, tiles)
    v_TxPxC = v_TxPxC.reshape(n * n, b * th * tw, c)
    u_TxCxO = kernel_transform(kernel_3x3xCxO, m)
    prod = jnp.einsum("tpc,tco->tpo", v_TxPxC, u_TxCxO).reshape(n, n, b, th, tw, o)
    y = jnp.einsum("ku,lv,uvBhwo->Bhkwlo", at, at, prod)  # B, th, m, tw, m, O
    return y.reshape(b, th * m, tw * m, o)[:, :h, :w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_winograd(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array, m: int) -> jax.Array:
    """Winograd F(m x m, 3 x 3) 'SAME' convolution; any H and W (padded to tiles, cropped).

    The input gradient of a stride-1 'SAME' 3x3 convolution is the same convolution
    with the kernel rotated by 180 degrees and its channel axes swapped, so the
    backward pass is Winograd too (a custom VJP: autodiff through the transforms'
    slices and stacks compiles slowly and runs slowly on XLA CPU). The kernel
    gradient, rarely wanted here, is XLA's; unused, it is dead code under jit.
    Forward-mode differentiation (jvp) is not supported.
    """
    return _winograd_forward(x_BxHxWxC, kernel_3x3xCxO, m)


def _winograd_fwd(x_BxHxWxC, kernel_3x3xCxO, m):
    return _winograd_forward(x_BxHxWxC, kernel_3x3xCxO, m), (x_BxHxWxC, kernel_3x3xCxO)


def _winograd_bwd(m, residuals, dy_BxHxWxO):
    x_BxHxWxC, kernel_3x3xCxO = residuals
    flipped_3x3xOxC = jnp.flip(kernel_3x3xCxO, (0, 1)).swapaxes(2, 3)
    dx = _winograd_forward(dy_BxHxWxO, flipped_3x3xOxC, m)
    _, kernel_vjp = jax.vjp(lambda k: conv_xla(x_BxHxWxC, k), kernel_3x3xCxO)
    return dx, kernel_vjp(dy_BxHxWxO)[0]


conv_winograd.defvjp(_winograd_fwd, _winograd_bwd)


MIN_WINOGRAD_CHANNELS = 16
"""Layers with fewer input channels (VGG's RGB conv1_1) use XLA's convolution:
a matrix product over 3 channels cannot amortize the transforms."""


def _hybrid(m: int, min_channels: int = MIN_WINOGRAD_CHANNELS):
    def conv(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array) -> jax.Array:
        if x_BxHxWxC.shape[-1] < min_channels:
            return conv_xla(x_BxHxWxC, kernel_3x3xCxO)
        return conv_winograd(x_BxHxWxC, kernel_3x3xCxO, m)

    conv.__doc__ = f"Winograd F({m}x{m}, 3x3), XLA for fewer than {min_channels} input channels."
    return conv


CONV_IMPLS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "xla": conv_xla,
    "winograd2": _hybrid(2),
    "winograd4": _hybrid(4),
    # Winograd only where its batched products are wide (>= 128 input channels): the
    # 64-channel, high-resolution layers are memory-bound in the transforms.
    "winograd4_wide": _hybrid(4, 128),
}

DEFAULT_IMPL = "xla"
"""Recommended implementation on CPU (see benchmarks/conv_speed.py). On the 2-core AVX2
machine, "winograd4" with :data:`RECOMMENDED_XLA_FLAGS` merely ties XLA at 256x256
(0.97 s vs 1.00 s per step) and loses at 512x512 (4.1 s vs 3.7 s), and compiles 6x
slower; it only pulls ahead when the machine is shared (0.71 s vs 1.42 s)."""

RECOMMENDED_XLA_FLAGS = "--xla_cpu_experimental_onednn_fusion_type=dot"
"""XLA CPU flags to put in ``XLA_FLAGS`` before JAX starts when using Winograd: oneDNN
runs the batched matrix products and small transform products 2-4x faster than XLA's
default (Eigen) dots on AVX2; XLA's own convolution is unaffected."""


def check_impl(name: str) -> str:
    if name not in CONV_IMPLS:
        raise UsageError(
            f"unknown convolution implementation {name!r}; use one of {sorted(CONV_IMPLS)}"
        )
    return name


def conv3x3(
    x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array, bias_O: jax.Array, impl: str = "xla"
) -> jax.Array:
    return CONV_IMPLS[check_impl(impl)](x_BxHxWxC, kernel_3x3xCxO) + bias_O


def pool2x2(x_BxHxWxC: jax.Array, kind: str) -> jax.Array:
    """2x2/2 max or average pooling (odd sizes floor, as in Caffe's VGG with even inputs).

    Written as a reshape and a reduction: its gradient is a broadcast, much faster
    on CPU than the gradient of ``reduce_window`` (select-and-scatter, windowed sums).
    """
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC[:, : h - h % 2, : w - w % 2, :].reshape(b, h // 2, 2, w // 2, 2, c)
    return jnp.max(x, axis=(2, 4)) if kind == "max" else jnp.mean(x, axis=(2, 4))
