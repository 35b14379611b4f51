"""The Gatys objective against an independent float64 numpy implementation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import image, objective
from tests import numpy_ref

CONTENT = ("conv4_2",)
STYLE = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


@pytest.fixture(scope="module")
def small_problem(images, real_weights):
    content = image.load(images / "tubingen.jpg", size=(24, 32))
    style = image.load(images / "starry_night.jpg", size=(24, 32))
    rng = np.random.default_rng(0)
    x = np.clip(content + rng.normal(0, 20, content.shape), 0, 255).astype(np.float32)
    spec = objective.gatys(CONTENT, STYLE, "avg", "gatys", real_weights.preprocessing)
    params = jax.tree.map(jnp.asarray, real_weights.params)
    targets = objective.targets(spec, params, content, [style], [1.0])
    weights = objective.make_weights(spec, alpha=1.0, beta=1e3)
    np_params = jax.tree.map(np.asarray, real_weights.params)
    return spec, params, targets, weights, x, content, style, np_params


def _ref(np_params, x, content, style):
    return numpy_ref.gatys_loss(
        np_params, np.float64(x), content, style, list(CONTENT), list(STYLE), 1.0, 1e3, "avg"
    )


def test_loss_matches_numpy_float64(small_problem):
    spec, params, targets, weights, x, content, style, np_params = small_problem
    total, parts = objective.loss(spec, jnp.asarray(x)[None], params, targets, weights)
    ref = _ref(np_params, x, content, style)
    assert abs(float(total) - ref) / ref < 1e-4
    assert float(parts["tv_loss"]) == 0.0
    np.testing.assert_allclose(
        float(total), float(parts["content_loss"] + parts["style_loss"]), rtol=1e-6
    )


def test_gradient_matches_float64_finite_differences(small_problem):
    spec, params, targets, weights, x, content, style, np_params = small_problem
    grad = jax.grad(lambda im: objective.loss(spec, im, params, targets, weights)[0])(
        jnp.asarray(x)[None]
    )
    grad = np.asarray(grad[0], np.float64)
    rng = np.random.default_rng(1)
    eps = 1e-2  # pixel units; the float64 loss is smooth at this scale
    for _ in range(3):
        v = rng.normal(size=x.shape)
        v /= np.linalg.norm(v)
        fd = (
            _ref(np_params, x + eps * v, content, style)
            - _ref(np_params, x - eps * v, content, style)
        ) / (2 * eps)
        np.testing.assert_allclose(np.sum(grad * v), fd, rtol=2e-3)


def test_gram_normalizations_scale_as_documented():
    rng = np.random.default_rng(0)
    f = jnp.asarray(rng.normal(size=(1, 4, 5, 3)), jnp.float32)
    a = jnp.asarray(rng.normal(size=(1, 3, 3)), jnp.float32)
    g = np.asarray(f[0]).reshape(20, 3)
    sq = np.sum((g.T @ g - np.asarray(a[0])) ** 2)
    n, m = 3.0, 20.0
    from nstjax import losses

    expected = {
        "gatys": sq / (4 * n * n * m * m),
        "n": sq / n**2,
        "hw": sq / m**2,
        "chw": sq / (n * n * m * m),
    }
    for norm, value in expected.items():
        got = float(losses.style_layer_loss(f, a, norm)[0])
        np.testing.assert_allclose(got, value, rtol=1e-5, err_msg=norm)


def test_style_targets_are_size_invariant(real_weights, images):
    """A style image at twice the size gives Grams of the same scale (not 4x larger).

    Downscaling removes fine detail, so the Grams differ somewhat (~20% here); without
    the M/M_s rescaling they would differ by the factor of 4 in positions.
    """
    spec = objective.gatys((), ("relu1_1",), "avg", "gatys", real_weights.preprocessing)
    params = jax.tree.map(jnp.asarray, real_weights.params)
    big = image.load(images / "starry_night.jpg", size=(64, 96))
    small = image.resize(big, 32, 48)
    out = np.zeros((32, 48, 3), np.float32)  # the output's size
    a = objective.targets(spec, params, out, [big], [1.0])[0]["relu1_1"]
    b = objective.targets(spec, params, out, [small], [1.0])[0]["relu1_1"]
    chex.assert_shape(a, (1, 64, 64))
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 0.3
    assert 0.67 < float(jnp.linalg.norm(a) / jnp.linalg.norm(b)) < 1.5


def test_changing_weights_does_not_retrace(tiny_params):
    spec = objective.gatys(("relu2_1",), ("relu1_1",), "max", "gatys")
    x = jnp.ones((1, 8, 8, 3)) * 100
    targets = objective.targets(spec, tiny_params, np.ones((8, 8, 3)), [np.zeros((8, 8, 3))], [1.0])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, w):
        return objective.loss(spec, x, tiny_params, targets, w)[0]

    values = [
        float(f(x, objective.make_weights(spec, alpha=a, beta=b, gamma=g)))
        for a, b, g in [(1, 1, 0), (2, 1e3, 1), (0.5, 0, 3)]
    ]
    assert len(set(values)) == 3
