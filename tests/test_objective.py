"""The Gatys objective against an independent float64 numpy implementation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import image, losses, objective
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


def test_gram_gradient_matches_float64_finite_differences():
    """``losses.gram``'s own VJP (Gatys et al. 2016, eq. 6: ``F (dG + dG^T)``) against
    central differences of a float64 numpy Gram, with a cotangent that is not symmetric,
    and batched (vmap, as the engine runs it) against one at a time."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2, 3, 4, 5))
    w = rng.normal(size=(2, 5, 5))

    def ref(f64):
        g = np.einsum("bhwc,bhwd->bcd", f64, f64)
        return float(np.sum(w * g) + 1e-2 * np.sum(g**2))

    def fn(x, w):
        g = losses.gram(x)
        return jnp.sum(w * g) + 1e-2 * jnp.sum(g**2)

    grad = np.asarray(jax.grad(fn)(jnp.asarray(f, jnp.float32), jnp.asarray(w, jnp.float32)))
    assert grad.shape == f.shape
    eps = 1e-4
    for _ in range(4):
        v = rng.normal(size=f.shape)
        fd = (ref(f + eps * v) - ref(f - eps * v)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grad * v), fd, rtol=1e-4)
    each = jax.vmap(jax.grad(lambda x, w: fn(x[None], w[None])))(
        jnp.asarray(f, jnp.float32), jnp.asarray(w, jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(each), grad, rtol=1e-5, atol=1e-5)


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


# --- Against the float64 reference: every part of the loss, every option --------------

RELU_CONTENT = ("relu4_2",)
RELU_STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
NORMS = ("gatys", "n", "hw", "chw")


def _rel(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def more_styles(images):
    """Two style images of other sizes than the 24x32 output: 40x56 and portrait 32x24."""
    return (
        image.load(images / "starry_night.jpg", size=(40, 56)),
        image.load(images / "the_scream.jpg", size=(32, 24)),
    )


def test_tv_loss_of_a_known_image():
    """A ramp along x and a step along y: TV = 3 * (H * (W-1) * 1^2 + W * 10^2)."""
    h, w = 6, 8
    x = np.zeros((h, w, 3)) + np.arange(w)[None, :, None]
    x[h // 2 :] += 10.0
    assert numpy_ref.tv_loss(x) == 3 * (h * (w - 1) + w * 100)
    from nstjax import losses

    got = losses.tv_loss(jnp.asarray(x, jnp.float32)[None])
    np.testing.assert_allclose(np.asarray(got), [3 * (h * (w - 1) + w * 100)], rtol=1e-6)


def test_tv_loss_matches_numpy(small_problem):
    spec, params, targets, _, x, content, style, np_params = small_problem
    gamma = 2.5
    weights = objective.make_weights(spec, alpha=1.0, beta=1e3, gamma=gamma)
    total, parts = objective.loss(spec, jnp.asarray(x)[None], params, targets, weights)
    tv = gamma * numpy_ref.tv_loss(x)
    assert tv > 1e6  # the noisy image is far from smooth: not a trivially small number
    assert _rel(parts["tv_loss"], tv) < 1e-5
    assert _rel(parts["terms"][spec.names.index("tv")], tv) < 1e-5
    assert _rel(total, _ref(np_params, x, content, style) + tv) < 1e-4


def test_blended_style_targets_and_loss_match_numpy(small_problem, more_styles):
    """Two styles blended (w, 1-w): the Gram targets are w G1 + (1-w) G2 (each rescaled
    to the output's positions), and the loss at a fixed image uses that target."""
    spec, params, _, _, x, content, style, np_params = small_problem
    scream = more_styles[1]
    w = 0.3
    targets = objective.targets(spec, params, content, [style, scream], [w, 1 - w])
    ref = {}
    for k in STYLE:
        g1 = numpy_ref.style_targets(np_params, [style], [1.0], [k], (24, 32))[k]
        g2 = numpy_ref.style_targets(np_params, [scream], [1.0], [k], (24, 32))[k]
        ref[k] = w * g1 + (1 - w) * g2
        assert _rel(targets[1][k][0], ref[k]) < 1e-5, k
        assert _rel(ref[k], (1 - w) * g1 + w * g2) > 1e-2, k  # the blend is not symmetric
    np.testing.assert_allclose(  # the same target from the reference's own blend
        numpy_ref.style_targets(np_params, [style, scream], [w, 1 - w], ["conv3_1"], (24, 32))[
            "conv3_1"
        ],
        ref["conv3_1"],
        rtol=1e-12,
    )
    weights = objective.make_weights(spec, alpha=1.0, beta=1e3)
    total, parts = objective.loss(spec, jnp.asarray(x)[None], params, targets, weights)
    fx = numpy_ref.features(np_params, np.float64(x), list(CONTENT + STYLE))
    fc = numpy_ref.features(np_params, content, list(CONTENT))
    lc = numpy_ref.content_loss(fx, fc, CONTENT, [1.0])
    ls = 1e3 * numpy_ref.style_loss(fx, ref, STYLE, [0.2] * 5)
    assert _rel(parts["style_loss"], ls) < 1e-4
    assert _rel(parts["content_loss"], lc) < 1e-4
    assert _rel(total, lc + ls) < 1e-4


def test_style_of_another_size_matches_numpy(small_problem, more_styles):
    """Content 24x32, style 40x56: each layer's style Gram is rescaled by M_out / M_style
    (M: that layer's positions, floor pooling) before it is compared with the output's."""
    spec, params, _, _, x, content, _, np_params = small_problem
    big = more_styles[0]
    targets = objective.targets(spec, params, content, [big], [1.0])
    fs = numpy_ref.features(np_params, np.float64(big), list(STYLE))
    ref = {}
    for k in STYLE:
        m_style = fs[k].shape[0] * fs[k].shape[1]
        m_out = numpy_ref.positions(k, 24, 32)
        assert m_out != m_style, k
        ref[k] = numpy_ref.gram(fs[k]) * m_out / m_style
        assert _rel(targets[1][k][0], ref[k]) < 1e-5, k
    weights = objective.make_weights(spec, alpha=1.0, beta=1e3)
    total, parts = objective.loss(spec, jnp.asarray(x)[None], params, targets, weights)
    fx = numpy_ref.features(np_params, np.float64(x), list(CONTENT + STYLE))
    fc = numpy_ref.features(np_params, content, list(CONTENT))
    ls = 1e3 * numpy_ref.style_loss(fx, ref, STYLE, [0.2] * 5)
    assert _rel(parts["style_loss"], ls) < 1e-4
    assert _rel(total, numpy_ref.content_loss(fx, fc, CONTENT, [1.0]) + ls) < 1e-4


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_gram_norms_and_pooling_match_numpy(small_problem, more_styles, real_weights, pooling):
    """One objective with a gram term per normalization (relu layers, uneven layer and
    term weights), average or max pooling, a style of another size: every term's value
    against the float64 reference."""
    from nstjax.terms.registry import Term

    _, params, _, _, x, content, _, np_params = small_problem
    big = more_styles[0]
    terms = [Term("mse", "content/mse", RELU_CONTENT)]
    terms += [Term("gram", f"style/{n}", RELU_STYLE, (("norm", n),)) for n in NORMS]
    terms.append(Term("tv", "tv"))
    spec = objective.Objective(tuple(terms), pooling, real_weights.preprocessing, "xla")
    layer_w = (0.1, 0.3, 0.2, 0.25, 0.15)
    term_w = (1.5, 1.0, 0.5, 2.0, 3.0, 1.0)
    alpha, beta, gamma = 2.0, 1e3, 0.1
    weights = objective.make_weights(
        spec, alpha, beta, gamma, style_layer_weights=layer_w, term_weights=term_w
    )
    targets = objective.targets(spec, params, content, [big], [1.0])
    total, parts = objective.loss(spec, jnp.asarray(x)[None], params, targets, weights)

    layers = list(RELU_CONTENT + RELU_STYLE)
    fx = numpy_ref.features(np_params, np.float64(x), layers, pooling)
    fc = numpy_ref.features(np_params, content, list(RELU_CONTENT), pooling)
    ref_t = numpy_ref.style_targets(np_params, [big], [1.0], RELU_STYLE, (24, 32), pooling)
    ref = [alpha * term_w[0] * numpy_ref.content_loss(fx, fc, RELU_CONTENT, [1.0])]
    ref += [
        beta * term_w[1 + i] * numpy_ref.style_loss(fx, ref_t, RELU_STYLE, layer_w, norm)
        for i, norm in enumerate(NORMS)
    ]
    ref.append(gamma * term_w[5] * numpy_ref.tv_loss(x))
    for name, got, want in zip(spec.names, parts["terms"], ref, strict=True):
        assert _rel(got, want) < 1e-4, (name, float(got), want)
    assert _rel(parts["style_loss"], sum(ref[1:5])) < 1e-4
    assert _rel(total, sum(ref)) < 1e-4
