"""Colour control (Gatys et al. 2017, Section 5): YIQ, luminance-only transfer, colour
histogram matching -- on the paper's own Fig. 3 content and style images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nstjax import color, image
from nstjax.errors import UsageError
from tests.conftest import unavailable


@pytest.fixture(scope="module")
def fig3(images):
    """(content, style) of the paper's Fig. 3, float32 HxWx3 with a long side of 128."""
    d = images / "gatys2017"
    paths = [d / "fig3_content.jpg", d / "fig3_style1.jpg"]
    for p in paths:
        if not p.is_file():
            unavailable(f"the test image {p} is missing")
    return tuple(image.load(p, long_side=128) for p in paths)


def _iq_rows(rgb):
    return np.asarray(rgb, np.float64) @ color.RGB_TO_YIQ[1:].T


def test_yiq_round_trip_and_grey(fig3):
    rng = np.random.default_rng(0)
    for img in (*fig3, rng.uniform(0, 255, (17, 23, 3)).astype(np.float32)):
        back = color.yiq_to_rgb(color.rgb_to_yiq(img))
        assert back.dtype == np.float32 and back.shape == img.shape
        assert np.abs(back.astype(np.float64) - img).max() <= 1e-4
    # The matrices are exact inverses, not a rounded pair.
    np.testing.assert_allclose(color.RGB_TO_YIQ @ color.YIQ_TO_RGB, np.eye(3), atol=1e-12)
    # I and Q rows sum to zero, so Y's column of the inverse is (1, 1, 1): a change of
    # luminance moves R, G and B equally.
    np.testing.assert_allclose(color.YIQ_TO_RGB[:, 0], 1.0, atol=1e-12)
    grey = np.arange(0, 256, 15, dtype=np.float32)
    yiq = color.rgb_to_yiq(np.repeat(grey[None, :, None], 3, axis=2))[0]
    assert np.abs(yiq[:, 0] - grey).max() <= 1e-4  # Y of grey v is v (0..255 units)
    assert np.abs(yiq[:, 1:]).max() <= 1e-4  # and it has no chrominance
    # A saturated colour does have chrominance (the I and Q rows are not zero).
    red = color.rgb_to_yiq(np.array([[[255.0, 0, 0]]], np.float32))[0, 0]
    np.testing.assert_allclose(red, [0.299 * 255, 0.595716 * 255, 0.211456 * 255], rtol=1e-6)


def test_match_luminance_has_content_statistics(fig3):
    content, style = fig3
    cy = color.rgb_to_yiq(content)[..., :1]
    sy = color.rgb_to_yiq(style)[..., :1]
    out = color.match_luminance(sy, cy)
    assert out.dtype == np.float32 and out.shape == sy.shape
    o, c, s = (np.asarray(a, np.float64) for a in (out, cy, sy))
    assert abs(o.mean() - c.mean()) <= 1e-6 * c.mean()
    assert abs(o.std() - c.std()) <= 1e-6 * c.std()
    # The images differ in luminance statistics to begin with, so this did something ...
    assert abs(s.mean() - c.mean()) > 1.0 or abs(s.std() - c.std()) > 1.0
    # ... and it is an increasing affine map of the style luminance (eq. 7).
    assert np.corrcoef(o.ravel(), s.ravel())[0, 1] > 1 - 1e-9
    # luminance_inputs gives the same, for each style, as HxWx1.
    cy2, styles = color.luminance_inputs(content, [style, style[::-1]])
    assert cy2.shape == content.shape[:2] + (1,) and len(styles) == 2
    np.testing.assert_array_equal(cy2, cy)
    np.testing.assert_array_equal(styles[0], out)
    np.testing.assert_allclose(styles[1], out[::-1], atol=1e-3)
    # A constant style luminance becomes the content's mean.
    flat = color.match_luminance(np.full((4, 5, 1), 80.0, np.float32), cy)
    np.testing.assert_allclose(flat, c.mean(), rtol=1e-6)


def test_recombine_own_luminance_is_identity(fig3):
    content, _ = fig3
    cy, _ = color.luminance_inputs(content, [])
    out = color.recombine(cy, content)
    assert out.dtype == np.float32 and out.shape == content.shape
    assert np.abs(out.astype(np.float64) - content).max() <= 1e-3


# 8-bit rounding moves each of R, G, B by at most 0.5, so I (or Q) by at most 0.5 times the
# sum of the absolute values of its row of the matrix: 0.596 for I, 0.523 for Q.
IQ_ROUNDING_BOUND = 0.5 * np.abs(color.RGB_TO_YIQ[1:]).sum(axis=1)


def _output_lumas(content, style):
    """Stand-ins for a stylised luminance: the Fig. 3 style's luminance matched to the
    content (real structure; above 255 in places, so some pixels clip), and noise."""
    _, (sy,) = color.luminance_inputs(content, [style])
    rng = np.random.default_rng(1)
    noise = rng.uniform(0, 255, content.shape[:2] + (1,)).astype(np.float32)
    return {"style": sy, "noise": noise}


@pytest.mark.parametrize("which", ["style", "noise"])
def test_recombine_keeps_content_chrominance(fig3, which):
    content, style = fig3
    y = _output_lumas(content, style)[which]
    assert y.shape[:2] == content.shape[:2]
    out = color.recombine(y, content)
    assert out.min() >= 0 and out.max() <= 255
    iq_c = _iq_rows(content)
    # Where no channel was clipped, I and Q are the content's (float32 rounding only) and
    # Y is the output's.
    raw = np.concatenate([y, iq_c], axis=-1) @ color.YIQ_TO_RGB.T
    inside = ((raw >= 0) & (raw <= 255)).all(axis=-1)
    assert inside.mean() > 0.5  # the check below covers most of the image
    dev = np.abs(_iq_rows(out) - iq_c)[inside].max()
    assert dev <= 1e-3, dev
    ydev = np.abs(color.rgb_to_yiq(out)[..., 0] - y[..., 0])[inside].max()
    assert ydev <= 1e-3, ydev
    # Written as 8-bit, they are the content's to within 8-bit rounding.
    out8 = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    dev8 = np.abs(_iq_rows(out8) - iq_c)[inside].max(axis=0)
    assert (dev8 <= IQ_ROUNDING_BOUND + 1e-3).all(), dev8
    assert (dev8 <= 1.0).all(), dev8


def test_match_histogram_matches_mean_and_covariance(fig3):
    content, style = fig3
    xc = content.reshape(-1, 3).astype(np.float64)
    mu_c, cov_c = xc.mean(0), np.cov(xc.T, bias=True)
    xs = style.reshape(-1, 3).astype(np.float64)
    # The images' colours differ to begin with.
    assert np.linalg.norm(np.cov(xs.T, bias=True) - cov_c) > 0.1 * np.linalg.norm(cov_c)
    outs = {}
    for mode in color.TRANSFERS:
        out = color.match_histogram(style, content, mode=mode)
        assert out.dtype == np.float32 and out.shape == style.shape
        xo = out.reshape(-1, 3).astype(np.float64)
        np.testing.assert_allclose(xo.mean(0), mu_c, rtol=1e-3)
        rel = np.linalg.norm(np.cov(xo.T, bias=True) - cov_c) / np.linalg.norm(cov_c)
        assert rel <= 1e-3, (mode, rel)
        outs[mode] = xo
        clipped = color.match_histogram(style, content, mode=mode, clip=True)
        assert clipped.min() >= 0 and clipped.max() <= 255
        np.testing.assert_array_equal(clipped, np.clip(out, 0, 255))
    # Different square roots of the same covariance: different images.
    for a, b in itertools.combinations(color.TRANSFERS, 2):
        assert np.abs(outs[a] - outs[b]).max() > 10.0, (a, b)


def test_transfer_matrices_are_the_documented_square_roots(fig3):
    content, style = fig3
    _, cov_s = color._stats(style.reshape(-1, 3).astype(np.float64))
    _, cov_c = color._stats(content.reshape(-1, 3).astype(np.float64))
    mats = {m: color._transfer_matrix(cov_s, cov_c, m) for m in color.TRANSFERS}
    for mode, a in mats.items():
        np.testing.assert_allclose(
            a @ cov_s @ a.T, cov_c, rtol=1e-9, atol=1e-9 * cov_c.max(), err_msg=mode
        )
    assert np.allclose(np.triu(mats["cholesky"], 1), 0)  # L_c L_s^-1 is lower triangular
    # sym: Sigma_c^(-1/2) A = Sigma_s^(-1/2) is symmetric positive definite.
    w, q = np.linalg.eigh(cov_c)
    p = (q / np.sqrt(w)) @ q.T @ mats["sym"]
    np.testing.assert_allclose(p, p.T, atol=1e-12)
    assert np.linalg.eigvalsh(p).min() > 0
    # pca maps the style's principal axes onto the content's, in order.
    _, q_s = color._eig_desc(cov_s)
    _, q_c = color._eig_desc(cov_c)
    mapped = mats["pca"] @ q_s
    np.testing.assert_allclose(mapped / np.linalg.norm(mapped, axis=0), q_c, atol=1e-9)


def test_match_histogram_degenerate_images_stay_finite(fig3):
    content, _ = fig3
    mu_c = content.reshape(-1, 3).astype(np.float64).mean(0)
    flat = np.full((6, 7, 3), 120.0, np.float32)
    grey = np.repeat(content[..., :1], 3, axis=2)
    for mode in color.TRANSFERS:
        out = color.match_histogram(flat, content, mode=mode)
        np.testing.assert_allclose(out, np.broadcast_to(mu_c, out.shape), rtol=1e-5)
        out = color.match_histogram(grey, content, mode=mode)
        assert np.isfinite(out).all()
        out = color.match_histogram(content, flat, mode=mode)
        np.testing.assert_allclose(out, 120.0, atol=1e-2)


def test_unknown_names_are_usage_errors(fig3):
    content, style = fig3
    for mode in color.MODES:
        for transfer in color.TRANSFERS:
            color.check(mode, transfer)
    with pytest.raises(UsageError, match="unknown colour mode 'lum'") as e:
        color.check("lum", "cholesky")
    assert "\n" not in str(e.value) and "luminance" in str(e.value)
    with pytest.raises(UsageError, match="unknown colour transfer 'svd'"):
        color.check("histogram", "svd")
    with pytest.raises(UsageError, match="unknown colour transfer 'Cholesky'"):
        color.match_histogram(style, content, mode="Cholesky")
