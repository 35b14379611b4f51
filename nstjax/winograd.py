"""Winograd minimal filtering for 3x3 'SAME' convolutions (NHWC x HWIO).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2015), F(m x m, 3 x 3):
each (m+2) x (m+2) input tile and the kernel are taken to a transform domain of
n^2 = (m+2)^2 points, where the convolution becomes one matrix product per point over
the channels, and the products are taken back to an m x m output tile. That needs
9 m^2 / n^2 times fewer multiplications than direct convolution (2.25x for m = 2, 4x
for m = 4).

Style transfer never changes the VGG weights, so the kernels can be transformed once
per run (:func:`kernel_transform`) and passed to the compiled step as data
(:func:`conv_pretransformed`); :func:`conv_winograd` transforms them on every call.
Both have a custom VJP: the input gradient of a stride-1 'SAME' 3x3 convolution is
the convolution (not correlation) with the same kernel, channel axes swapped, so the
backward pass is Winograd too, with the same transformed kernel (:func:`_input_grad`).

The input transform ``B^T d B`` is separable: ``B^T`` over the tile rows (linear
combinations of strided slices of the padded input, ``m`` apart), then over the tile
columns, each stage one stack that XLA fuses into one loop (:func:`_input_transform`). The
output transform is one matrix product with the constant ``A^T kron A^T`` (``m^2 x T``,
``T = n^2``) over the stacked products. The input's was one product with ``B^T kron B^T``
(``T x T``) over tiles stacked first: at 256x192, a profile of the VGG19 L-BFGS step
(``--xla_cpu_enable_xprof_traceme``, wall time shared among concurrent operations) gave
the two transforms' Kronecker products 135 of 328 ms, as much as the channel products; conv1_2's
forward alone spent 35 ms, 5.5 of them in its channel product. Separable, the step took
0.272-0.283 s against 0.328-0.335 s and compiled in 4.40-4.48 against 3.44-3.51 s
(``python benchmarks/conv_speed.py --sizes 256 --aspect 0.75 --impls auto --repeats 10``,
3 alternated pairs, the 2-core AVX2 EPYC); at 512x384 (2 pairs, ``--repeats 5``)
1.018-1.024 against 1.079-1.114 s, compiled in 3.3 against 2.5-3.1 s. Before the Kronecker
products each transform point was one linear combination of 36 strided slices,
hundreds of small fusions per layer and direction: the step compiled in 6.0-7.3 s at
256x192 (1.4-1.9 s with the products, on the AVX-512 EPYC).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

Matrix = tuple[tuple[float, ...], ...]


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


POINTS: dict[int, tuple[float, ...]] = {
    2: (0.0, 1.0, -1.0),
    3: (0.0, 1.0, -1.0, 0.5),
    4: (0.0, 1.0, -1.0, 0.5, -0.5),
}
"""Finite interpolation points of F(m x m, 3 x 3) (plus infinity), by output tile size m.

For m = 4, +-1/2 keep float32 errors as small as Lavin & Gray's +-2 do (both a few
1e-6 of the output's range, see tests/test_conv.py), with smaller transform entries.
m = 3 (25 points) is for layers with few positions and many channels, whose products
read more kernel than data (:func:`nstjax.conv_policy._auto`).
"""


@functools.cache
def matrices(m: int) -> tuple[Matrix, Matrix, Matrix]:
    """``(A^T, G, B^T)`` of F(m x m, 3 x 3) with :data:`POINTS`."""
    return toom_cook(POINTS[m], m)


def kernel_transform(kernel_3x3xCxO: jax.Array, m: int) -> jax.Array:
    """``G k G^T`` for every (input, output) channel pair: ``(m+2)^2 x C x O``.

    One product with ``G kron G`` (``(m+2)^2 x 9``, each entry ``G[u, a] G[v, b]``
    rounded to float32 once) over the kernel's 9 taps, read in place: one pass over the
    kernel, one over the result. VGG19's 14 Winograd layers at 256x192 (186 MiB of
    transformed kernels): 0.06 s against 0.25-0.33 s as a two-sided ``einsum`` (which
    XLA ran as two contractions through a transposed intermediate), compiled in 0.06
    against 0.12 s; within 2.1e-7 of it, relative to each layer's largest entry."""
    g = np.asarray(matrices(m)[1], np.float64)
    gg_Tx9 = np.kron(g, g).astype(np.float32)  # [u (m+2) + v, 3 a + b] = G[u, a] G[v, b]
    c, o = kernel_3x3xCxO.shape[2:]
    u = jnp.dot(gg_Tx9, kernel_3x3xCxO.reshape(9, c * o))
    return u.reshape((m + 2) ** 2, c, o)


def _transforms(m: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(B^T, A^T)``; with ``flip``, ``(B^T J_n, J_m A^T)`` (``J``: the reversal), which
    turn the tile correlation with a kernel into the convolution with it."""
    at, _, bt = (np.asarray(a, np.float32) for a in matrices(m))
    return (bt[:, ::-1], at[::-1]) if flip else (bt, at)


def _linear(matrix: np.ndarray, part) -> list:
    """``[sum_a matrix[u, a] * part(a) for each row u]``: constant coefficients, zeros
    skipped and +-1 taken as they are, so XLA fuses each stage into one loop."""
    out = []
    for row in np.asarray(matrix, np.float64):
        acc = None
        for a, coef in enumerate(row):
            if coef == 0.0:
                continue
            t = part(a)
            t = t if coef == 1.0 else -t if coef == -1.0 else t * np.float32(coef)
            acc = t if acc is None else acc + t
        out.append(acc)
    return out


def _input_transform(x_BxHxWxC: jax.Array, m: int, flip: bool = False):
    """Tiles ``B^T d B`` of the zero-padded input: ``(T, B*th*tw, C)`` and ``(B, th, tw)``.

    Separable: ``B^T`` over the tile rows (strided slices of the padded input, ``m``
    apart), then over the tile columns, each a stack of linear combinations."""
    bt = _transforms(m, flip)[0]
    n = m + 2
    b, h, w, c = x_BxHxWxC.shape
    th, tw = -(-h // m), -(-w // m)
    x = jnp.pad(x_BxHxWxC, ((0, 0), (1, th * m + 1 - h), (1, tw * m + 1 - w), (0, 0)))
    rows = jnp.stack(_linear(bt, lambda a: x[:, a : a + (th - 1) * m + 1 : m]))  # n,B,th,W+2,C
    cols = _linear(bt, lambda a: rows[:, :, :, a : a + (tw - 1) * m + 1 : m])  # n x (n,B,th,tw,C)
    return jnp.stack(cols, 1).reshape(n * n, -1, c), (b, th, tw)


def _output_transform(
    prod: jax.Array, m: int, tiles, h: int, w: int, flip: bool = False, tcp: bool = False
) -> jax.Array:
    """``A^T M A`` of every tile's products (one product with ``A^T kron A^T``,
    ``m^2 x T``), assembled and cropped to ``B x h x w x O``. ``prod`` is ``T x P x O``,
    or ``T x O x P`` with ``tcp``.

    Unlike the input's, this transform stays one product: done separably (two stacks of
    linear combinations, the second fused with the tile assembly) it compiled the VGG19
    step 1.5-1.8 s slower for no faster step (``benchmarks/conv_speed.py``, 3 alternated
    pairs at 256x192)."""
    at = _transforms(m, flip)[1]
    b, th, tw = tiles
    o = prod.shape[1 if tcp else 2]
    y = jnp.dot(np.kron(at, at), prod.reshape(prod.shape[0], -1),
                precision=jax.lax.Precision.HIGHEST)  # fmt: skip
    if tcp:  # -> B, th, row, tw, col, O
        y = y.reshape(m, m, o, b, th, tw).transpose(3, 4, 0, 5, 1, 2)
    else:
        y = y.reshape(m, m, b, th, tw, o).transpose(2, 3, 0, 4, 1, 5)
    return y.reshape(b, th * m, tw * m, o)[:, :h, :w]


def _forward(x_BxHxWxC: jax.Array, u_TxCxO: jax.Array, m: int) -> jax.Array:
    v_TxPxC, tiles = _input_transform(x_BxHxWxC, m)
    prod_TxPxO = jnp.einsum("tpc,tco->tpo", v_TxPxC, u_TxCxO)
    return _output_transform(prod_TxPxO, m, tiles, *x_BxHxWxC.shape[1:3])


SMALL_TILE_COUNT = 128
"""Below this many tiles per transform point, :func:`_input_grad` multiplies
``U (C x O) . dV^T`` instead of ``dV (P x O) . U^T``: the layers of 512 channels at
256 px (48 and 12 tiles). See :func:`_input_grad`."""


def _input_grad(dy_BxHxWxO: jax.Array, u_TxCxO: jax.Array, m: int) -> jax.Array:
    """The input gradient of :func:`_forward`, from the same transformed kernel.

    It is the 'SAME' convolution (not correlation) of ``dy`` with the kernel, channel
    axes swapped: dx[i] = sum_j k[j] dy[i + 1 - j]. Over each tile that is a
    convolution, so the tiling and ``U`` are the forward's and only the constant
    transforms change: ``B^T J`` and ``J A^T`` (:func:`_transforms`); the per-point
    product contracts ``U``'s output channels. One transformed kernel per layer, not
    two (the rotated kernel's): 198 MiB less for VGG19 to relu5_1 with F(4x4).

    The product's form follows the tile count ``P`` (YNNPACK on the 2-core AVX-512 CPU,
    ``python benchmarks/winograd_backward.py``): with many tiles ``dV . U^T`` is as fast
    as a product with a stored rotated kernel; with few (the 512-channel layers at 256
    px), ``U . dV^T`` is.
    """
    v_TxPxO, tiles = _input_transform(dy_BxHxWxO, m, flip=True)
    h, w = dy_BxHxWxO.shape[1:3]
    if v_TxPxO.shape[1] < SMALL_TILE_COUNT:
        prod_TxCxP = jnp.einsum("tco,tpo->tcp", u_TxCxO, v_TxPxO)
        return _output_transform(prod_TxCxP, m, tiles, h, w, flip=True, tcp=True)
    prod_TxPxC = jnp.einsum("tpo,tco->tpc", v_TxPxO, u_TxCxO)
    return _output_transform(prod_TxPxC, m, tiles, h, w, flip=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_winograd(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array, m: int) -> jax.Array:
    """Winograd F(m x m, 3 x 3) 'SAME' convolution; any H and W (padded to tiles, cropped).

    The kernel is transformed on every call. The kernel gradient, rarely wanted here,
    is XLA's; unused, it is dead code under jit. Forward-mode (jvp) is not supported.
    """
    return _forward(x_BxHxWxC, kernel_transform(kernel_3x3xCxO, m), m)


def _winograd_fwd(x_BxHxWxC, kernel_3x3xCxO, m):
    u_TxCxO = kernel_transform(kernel_3x3xCxO, m)
    return _forward(x_BxHxWxC, u_TxCxO, m), (x_BxHxWxC, kernel_3x3xCxO, u_TxCxO)


def _winograd_bwd(m, residuals, dy_BxHxWxO):
    x_BxHxWxC, kernel_3x3xCxO, u_TxCxO = residuals
    _, kernel_vjp = jax.vjp(
        lambda k: jax.lax.conv_general_dilated(
            x_BxHxWxC, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        ),
        kernel_3x3xCxO,
    )
    return _input_grad(dy_BxHxWxO, u_TxCxO, m), kernel_vjp(dy_BxHxWxO)[0]


conv_winograd.defvjp(_winograd_fwd, _winograd_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_pretransformed(x_BxHxWxC: jax.Array, u_TxCxO: jax.Array, m: int) -> jax.Array:
    """Winograd convolution with a kernel from :func:`kernel_transform`.

    The transformed kernel is treated as a constant: its cotangent is zero (as if
    under ``stop_gradient``). Differentiate :func:`conv_winograd` for kernel gradients.
    """
    return _forward(x_BxHxWxC, u_TxCxO, m)


def _pre_fwd(x_BxHxWxC, u_TxCxO, m):
    return _forward(x_BxHxWxC, u_TxCxO, m), u_TxCxO


def _pre_bwd(m, u_TxCxO, dy_BxHxWxO):
    return _input_grad(dy_BxHxWxO, u_TxCxO, m), jnp.zeros_like(u_TxCxO)


conv_pretransformed.defvjp(_pre_fwd, _pre_bwd)
