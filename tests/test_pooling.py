"""2x2/2 pooling with Caffe's ceil rounding (vgg.pool2x2, feature_hw) against numpy.

The numpy reference follows Caffe's PoolingLayer (BVLC/caffe
src/caffe/layers/pooling_layer.cpp, pad 0, kernel 2, stride 2): output size
ceil((n - 2) / 2) + 1; a window is clipped to the map; MAX keeps the first largest
element and sends the gradient there; AVE divides by the clipped window's size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import conv, vgg, vgg_net


def caffe_out(n: int) -> int:
    return int(np.ceil((n - 2) / 2)) + 1


def windows(n: int, ceil_mode: bool):
    """[(start, end)] of the 2-wide windows along an axis of length n."""
    count = caffe_out(n) if ceil_mode else n // 2
    return [(2 * i, min(2 * i + 2, n)) for i in range(count)]


def pool_ref(x, kind: str, ceil_mode: bool):
    """Forward pooling, loop by loop (float64)."""
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    rows, cols = windows(h, ceil_mode), windows(w, ceil_mode)
    out = np.zeros((b, len(rows), len(cols), c))
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            win = x[:, h0:h1, w0:w1, :]
            if kind == "max":
                out[:, i, j] = win.max(axis=(1, 2))
            else:
                out[:, i, j] = win.sum(axis=(1, 2)) / ((h1 - h0) * (w1 - w0))
    return out


def pool_grad_ref(x, g, kind: str, ceil_mode: bool):
    """Caffe's Backward_cpu: d(sum(g * pool(x)))/dx."""
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    dx = np.zeros_like(x)
    for i, (h0, h1) in enumerate(windows(h, ceil_mode)):
        for j, (w0, w1) in enumerate(windows(w, ceil_mode)):
            if kind == "avg":
                dx[:, h0:h1, w0:w1, :] += g[:, i, j][:, None, None, :] / ((h1 - h0) * (w1 - w0))
                continue
            for n in range(b):
                for k in range(c):
                    win = x[n, h0:h1, w0:w1, k]
                    a, bb = np.unravel_index(np.argmax(win), win.shape)  # first max
                    dx[n, h0 + a, w0 + bb, k] += g[n, i, j, k]
    return dx


SHAPES = [(1, 7, 9, 3), (2, 5, 5, 4), (1, 1, 3, 2), (1, 3, 1, 2), (1, 6, 8, 3), (2, 4, 7, 2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool_forward_and_grad_match_caffe_reference(shape, kind, ceil_mode):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype(np.float32)  # continuous: no ties in a window
    out = vgg.pool2x2(jnp.asarray(x), kind, ceil_mode)
    ref = pool_ref(x, kind, ceil_mode)
    assert out.shape == ref.shape
    if ceil_mode:
        assert out.shape[1:3] == tuple(caffe_out(n) for n in shape[1:3])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-6, atol=1e-6)
    if ref.size == 0:
        return
    g = rng.normal(size=ref.shape).astype(np.float32)
    grad = jax.grad(lambda x_: jnp.sum(vgg.pool2x2(x_, kind, ceil_mode) * g))(jnp.asarray(x))
    np.testing.assert_allclose(
        np.asarray(grad), pool_grad_ref(x, g, kind, ceil_mode), rtol=1e-6, atol=1e-6
    )


def test_ceil_max_pool_of_negative_border_values():
    """A border window of negative values is not beaten by the -inf padding (or a 0)."""
    x = -np.arange(1, 16, dtype=np.float32).reshape(1, 3, 5, 1)
    out = np.asarray(vgg.pool2x2(jnp.asarray(x), "max", ceil_mode=True))
    np.testing.assert_array_equal(out, pool_ref(x, "max", True))
    assert out[0, -1, -1, 0] == -15.0


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_even_sizes_and_floor_mode_are_the_old_reduction(kind):
    """Even maps in ceil mode and every map in floor mode run conv.pool2x2 unchanged."""
    for shape in [(1, 8, 6, 3), (1, 7, 9, 3)]:
        x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
        old = str(jax.make_jaxpr(lambda x_: conv.pool2x2(x_, kind))(x))
        assert str(jax.make_jaxpr(lambda x_: vgg.pool2x2(x_, kind))(x)) == old
        if shape[1] % 2 == 0 and shape[2] % 2 == 0:
            assert str(jax.make_jaxpr(lambda x_: vgg.pool2x2(x_, kind, True))(x)) == old


def test_feature_hw_matches_the_network_in_both_modes(tiny_params):
    layers = ("relu1_1", "pool1", "relu2_1", "pool2", "pool3", "relu4_2", "pool4", "pool5")
    for h, w in [(37, 45), (33, 64), (32, 32)]:
        x = jnp.zeros((1, h, w, 3), jnp.float32)
        for ceil_mode in (False, True):
            feats = jax.eval_shape(
                lambda x_, c=ceil_mode: vgg_net.features(tiny_params, x_, layers, ceil_mode=c), x
            )
            for layer in layers:
                assert feats[layer].shape[1:3] == vgg.feature_hw(layer, h, w, ceil_mode), (
                    layer,
                    h,
                    w,
                    ceil_mode,
                )
    assert vgg.feature_hw("pool5", 37, 45, ceil_mode=True) == (2, 2)
    assert vgg.feature_hw("pool5", 37, 45) == (1, 1)
    assert vgg.feature_hw("conv1_1", 7, 9, ceil_mode=True) == (7, 9)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_vgg_ceil_mode_equals_reference_pooling_composed(tiny_params, kind):
    """The network with ceil_mode pools each block's output as the reference does."""
    x = np.random.default_rng(1).normal(size=(1, 13, 11, 3)).astype(np.float32) * 50
    f = vgg_net.features(tiny_params, jnp.asarray(x), ("relu2_2", "pool2"), kind, ceil_mode=True)
    np.testing.assert_allclose(
        np.asarray(f["pool2"]), pool_ref(f["relu2_2"], kind, True), rtol=1e-6, atol=1e-6
    )
    assert f["pool2"].shape[1:3] == (4, 3)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="auto's F(3x3) bound is CPU's")
def test_prepare_params_follows_the_ceil_sizes(tiny_params):
    """271x271: pool4 is 16x16 = 256 positions (floor: conv5_1 takes F(3x3), 25 points) or
    17x17 = 289 (ceil: F(4x4), 36 points)."""
    shape = (1, 271, 271, 3)
    floor = vgg.prepare_params(tiny_params, shape, ("relu5_1",), "auto")
    ceil = vgg.prepare_params_jit(tiny_params, shape, ("relu5_1",), "auto", ceil_mode=True)
    assert floor["conv5_1"]["winograd"].shape == (25, 512, 512)
    assert ceil["conv5_1"]["winograd"].shape == (36, 512, 512)
