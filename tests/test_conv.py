"""Every convolution implementation against a float64 NumPy reference, values and gradients.

Errors are measured as max |y - y_ref| / max |y_ref|. Tolerances: 1e-5 for XLA and
Winograd F(2x2,3x3); 5e-5 for F(4x4,3x3), whose transforms amplify float32
rounding (measured: ~1e-6 and ~1e-5 at 256-512 channels).
"""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import conv, vgg, vgg_net, winograd
from nstjax.errors import UsageError

TOLERANCE = {
    "xla": 1e-5,
    "auto": 5e-5,
    "winograd2": 1e-5,
    "winograd3": 2e-5,  # F(3x3): conv_policy._auto on small deep layers
    "winograd4": 5e-5,
    "winograd4_wide": 5e-5,
}
# (batch, height, width, in channels, out channels): odd, even, non-square, tiny sizes;
# 3 input channels take the hybrids' XLA path. Op-by-op (jit=False) runs are slow, so
# only one shape runs without jit.
SHAPES = [
    (1, 5, 7, 3, 4),
    (2, 9, 6, 16, 8),
    (1, 8, 8, 32, 24),
    (1, 11, 13, 20, 17),
    (1, 1, 2, 16, 5),
]


def reference_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """3x3 'SAME' cross-correlation in float64."""
    b, h, w, _ = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += np.einsum(
                "bhwc,co->bhwo", padded[:, i : i + h, j : j + w], kernel[i, j].astype(np.float64)
            )
    return out


def reference_input_grad(kernel: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    """Gradient of sum(conv(x) * cotangent) w.r.t. x: the flipped, transposed kernel."""
    return reference_conv(cotangent, np.flip(kernel, (0, 1)).swapaxes(2, 3))


def relative_error(y, ref) -> float:
    return float(np.max(np.abs(np.asarray(y, np.float64) - ref)) / np.max(np.abs(ref)))


def random_problem(shape, seed=0):
    b, h, w, c, o = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, c, o)) / np.sqrt(9 * c)).astype(np.float32)
    cotangent = rng.standard_normal((b, h, w, o)).astype(np.float32)
    return x, kernel, cotangent


@pytest.mark.parametrize("m", sorted(winograd.POINTS))
def test_winograd_matrices_are_exact(m):
    at, g, bt = (
        np.array([[Fraction(v).limit_denominator(1 << 12) for v in row] for row in a])
        for a in winograd.matrices(m)
    )
    for k in range(m):
        for j in range(3):
            row = [sum(at[k, i] * g[i, j] * bt[i, q] for i in range(m + 2)) for q in range(m + 2)]
            assert row == [int(q == k + j) for q in range(m + 2)]


def test_toom_cook_rejects_bad_points():
    with pytest.raises(ValueError):
        winograd.toom_cook((0.0, 1.0, 1.0), 2)


@pytest.mark.parametrize("impl", sorted(conv.CONV_IMPLS))
@pytest.mark.parametrize(("shape", "jit"), [(s, True) for s in SHAPES] + [(SHAPES[1], False)])
def test_impl_matches_reference(impl, shape, jit):
    x, kernel, cotangent = random_problem(shape)

    def f(a, k):
        return conv.convolve(a, k, impl)

    f = jax.jit(f) if jit else f
    y = f(jnp.asarray(x), jnp.asarray(kernel))
    assert y.shape == shape[:3] + (shape[4],) and y.dtype == jnp.float32
    assert relative_error(y, reference_conv(x, kernel)) < TOLERANCE[impl]

    def functional(x_):
        return jnp.sum(f(x_, jnp.asarray(kernel)) * cotangent)

    grad = jax.grad(functional)
    grad = jax.jit(grad) if jit else grad
    dx = grad(jnp.asarray(x))
    assert relative_error(dx, reference_input_grad(kernel, cotangent)) < TOLERANCE[impl]


@pytest.mark.parametrize("m", sorted(winograd.POINTS))
def test_winograd_few_channels_and_kernel_grad(m):
    # The pure Winograd path (the hybrids send < 16 channels to XLA), and the kernel
    # gradient that the custom VJP delegates to XLA.
    x, kernel, cotangent = random_problem((2, 7, 10, 3, 5), seed=1)
    y = winograd.conv_winograd(jnp.asarray(x), jnp.asarray(kernel), m)
    assert relative_error(y, reference_conv(x, kernel)) < TOLERANCE[f"winograd{m}"]
    dx, dk = jax.grad(
        lambda a, k: jnp.sum(winograd.conv_winograd(a, k, m) * cotangent), argnums=(0, 1)
    )(jnp.asarray(x), jnp.asarray(kernel))
    assert relative_error(dx, reference_input_grad(kernel, cotangent)) < TOLERANCE[f"winograd{m}"]
    dk_ref = jax.grad(lambda k: jnp.sum(conv.conv_xla(jnp.asarray(x), k) * cotangent))(
        jnp.asarray(kernel)
    )
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=1e-5)


def test_conv3x3_adds_bias_and_checks_impl():
    x, kernel, _ = random_problem((1, 4, 4, 16, 3))
    bias = np.arange(3, dtype=np.float32)
    for impl in conv.CONV_IMPLS:
        y = conv.conv3x3(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias), impl)
        assert relative_error(y, reference_conv(x, kernel) + bias) < TOLERANCE[impl]
    assert conv.DEFAULT_IMPL in conv.CONV_IMPLS
    with pytest.raises(UsageError):
        conv.conv3x3(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias), "nope")


@pytest.mark.parametrize("m", sorted(winograd.POINTS))
def test_pretransformed_kernels_match_reference(m):
    # The per-run kernel transforms: same values and input gradient; the transformed
    # kernels are constants (zero cotangent).
    x, kernel, cotangent = random_problem((2, 9, 14, 16, 8), seed=2)
    prepared = conv.prepare_kernel(jnp.asarray(kernel), m)
    assert prepared.shape == ((m + 2) ** 2, 16, 8)  # one kernel: the backward's too
    impl = f"winograd{m}"

    def functional(x_, prep):
        return jnp.sum(conv.convolve(x_, jnp.asarray(kernel), impl, prep) * cotangent)

    y = jax.jit(lambda a, p: conv.convolve(a, jnp.asarray(kernel), impl, p))(
        jnp.asarray(x), prepared
    )
    assert relative_error(y, reference_conv(x, kernel)) < TOLERANCE[impl]
    dx, dprep = jax.jit(jax.grad(functional, argnums=(0, 1)))(jnp.asarray(x), prepared)
    assert relative_error(dx, reference_input_grad(kernel, cotangent)) < TOLERANCE[impl]
    assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(dprep))
    # A transform for another tile size is ignored (computed inline instead).
    other = conv.prepare_kernel(jnp.asarray(kernel), 6 - m)
    y2 = conv.convolve(jnp.asarray(x), jnp.asarray(kernel), impl, other)
    assert relative_error(y2, reference_conv(x, kernel)) < TOLERANCE[impl]


@pytest.mark.parametrize("m", sorted(winograd.POINTS))
def test_kernel_transform_is_g_k_gt_in_float64(m):
    # One product with G kron G over the 9 taps: G k G^T of every channel pair, within a
    # float32 rounding or two of the float64 definition.
    kernel = np.random.default_rng(m).normal(size=(3, 3, 5, 7)).astype(np.float32)
    g = np.asarray(winograd.matrices(m)[1], np.float64)
    want = np.einsum("ua,vb,abco->uvco", g, g, kernel.astype(np.float64))
    got = np.asarray(winograd.kernel_transform(jnp.asarray(kernel), m))
    assert got.shape == ((m + 2) ** 2, 5, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.reshape(got.shape), rtol=0, atol=3e-7 * np.abs(want).max())


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("m", sorted(winograd.POINTS))
def test_input_transform_is_bt_d_b_of_every_tile_in_float64(m, flip):
    # Separable (B^T over the tile rows, then the columns): B^T d B of every zero-padded
    # (m+2) x (m+2) tile, m apart, in (tile row, tile column, batch, th, tw) order, within
    # float32 rounding of the float64 definition; flip uses B^T J (the backward's).
    x = np.random.default_rng(10 + m).normal(size=(2, 7, 10, 3)).astype(np.float32)
    n, (b, h, w, c) = m + 2, x.shape
    th, tw = -(-h // m), -(-w // m)
    bt = np.asarray(winograd.matrices(m)[2], np.float64)
    bt = bt[:, ::-1] if flip else bt
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, th * m + 1 - h), (1, tw * m + 1 - w), (0, 0)))
    tile_rows = [
        [xp[:, i * m : i * m + n, j * m : j * m + n] for j in range(tw)] for i in range(th)
    ]
    d = np.stack([np.stack(row, 1) for row in tile_rows], 1)  # b, th, tw, n, n, c
    want = np.einsum("ua,vb,xijabc->uvxijc", bt, bt, d).reshape(n * n, b * th * tw, c)
    got, tiles = winograd._input_transform(jnp.asarray(x), m, flip)
    assert tiles == (b, th, tw) and got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("m", sorted(winograd.POINTS))
@pytest.mark.parametrize("shape", [(2, 9, 14, 16, 8), (1, 50, 46, 16, 8)])
def test_input_grad_from_the_forward_kernel_in_both_product_forms(m, shape):
    # The backward pass reuses the forward's transformed kernel (a convolution over each
    # tile: B^T J and J A^T); with few tiles it multiplies U . dV^T, with many dV . U^T.
    x, kernel, cotangent = random_problem(shape, seed=3)
    tiles = shape[0] * -(-shape[1] // m) * -(-shape[2] // m)
    assert (tiles < winograd.SMALL_TILE_COUNT) == (shape[1] == 9)
    u = winograd.kernel_transform(jnp.asarray(kernel), m)
    dx = jax.jit(jax.grad(lambda a: jnp.sum(winograd.conv_pretransformed(a, u, m) * cotangent)))(
        jnp.asarray(x)
    )
    assert dx.shape == x.shape
    assert relative_error(dx, reference_input_grad(kernel, cotangent)) < TOLERANCE[f"winograd{m}"]


def test_auto_policy_picks_winograd_where_it_pays_on_cpu():
    assert jax.default_backend() == "cpu"
    assert conv.tile_size("auto", 64, 64, 256, 256) == 4
    assert conv.tile_size("auto", 32, 32, 512, 512) == 4
    assert conv.tile_size("auto", 128, 128, 128, 128) == 4
    assert conv.tile_size("auto", 128, 128, 64, 128) == 4
    assert conv.tile_size("auto", 256, 256, 128, 128) == 4
    assert conv.tile_size("auto", 192, 256, 64, 64) == 4  # conv1_2 at 256x192
    assert conv.tile_size("auto", 512, 512, 128, 128) == 4  # no pixel bound
    assert conv.tile_size("auto", 768, 1024, 64, 64) == 4  # conv1_2 at 1024x768
    assert conv.tile_size("auto", 64, 64, 3, 64) == 0  # RGB input
    assert conv.tile_size("auto", 12, 16, 512, 512) == 3  # conv5_1 at 256x192: F(3x3)
    assert conv.tile_size("auto", 16, 16, 256, 512) == 3
    assert conv.tile_size("auto", 16, 16, 128, 256) == 4  # few channels
    assert conv.tile_size("auto", 24, 32, 512, 512) == 4  # conv4_x at 256x192, conv5_1 at 512
    assert conv.tile_size("xla", 64, 64, 256, 256) == 0
    assert conv.tile_size("winograd2", 8, 8, 16, 16) == 2
    with pytest.raises(UsageError, match="unknown convolution implementation"):
        conv.tile_size("fft", 8, 8, 16, 16)


def test_auto_policy_on_gpu_is_f2x2_at_every_size_and_xla_on_tpu(monkeypatch):
    # H200 measurements (conv_policy._auto's docstring): F(2x2) at 512 and 1024 px, not RGB
    monkeypatch.setattr(conv.jax, "default_backend", lambda: "gpu")
    assert conv.tile_size("auto", 512, 512, 64, 64) == 2
    assert conv.tile_size("auto", 1024, 1024, 64, 64) == 2
    assert conv.tile_size("auto", 32, 32, 512, 512) == 2
    assert conv.tile_size("auto", 1024, 1024, 3, 64) == 0
    monkeypatch.setattr(conv.jax, "default_backend", lambda: "tpu")
    assert conv.tile_size("auto", 64, 64, 256, 256) == 0


def test_prepare_params_transforms_exactly_the_winograd_layers():
    params = vgg.init_params(jax.random.PRNGKey(0))
    layers = ("relu1_1", "relu4_2")
    # 256x256: conv1_2 (256x256, 64 -> 64 ch) .. conv4_2 (32x32) run F(4x4, 3x3); the
    # RGB layer conv1_1 does not.
    prepared = vgg.prepare_params(params, (1, 256, 256, 3), layers, "auto")
    expected = [
        "conv1_2",
        "conv2_1",
        "conv2_2",
        "conv3_1",
        "conv3_2",
        "conv3_3",
        "conv3_4",
        "conv4_1",
        "conv4_2",
    ]
    assert sorted(k for k, v in prepared.items() if "winograd" in v) == expected
    assert "conv4_3" not in prepared  # past the deepest requested layer
    assert prepared["conv3_2"]["winograd"].shape == (36, 256, 256)
    # 512x512: the same layers (no pixel bound on CPU).
    big = vgg.prepare_params(params, (1, 512, 512, 3), layers, "auto")
    assert sorted(k for k, v in big.items() if "winograd" in v) == expected
    assert not any(
        "winograd" in v
        for v in vgg.prepare_params(params, (1, 256, 256, 3), layers, "xla").values()
    )
    # Features agree with XLA's convolution, with and without the prepared kernels.
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, 64, 48, 3)) * 255
    ref = vgg_net.features(params, x, layers, conv_impl="xla")
    prep = vgg.prepare_params(params, x.shape, layers, "winograd4")
    for p in (prep, params):
        out = jax.jit(lambda p_, x_: vgg_net.features(p_, x_, layers, conv_impl="winograd4"))(p, x)
        for k in layers:
            assert relative_error(out[k], np.asarray(ref[k], np.float64)) < 5e-5
