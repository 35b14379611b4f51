"""Colour control in runs (Gatys et al. 2017, Sec. 5): --preserve-color."""

from __future__ import annotations

import numpy as np

import nstjax
from nstjax import build, color, image, inputs


def _pair(images):
    g = images / "gatys2017"
    return str(g / "fig3_content.jpg"), str(g / "fig3_style1.jpg")


def test_luminance_only_keeps_the_contents_iq(images, real_weights):
    c, s = _pair(images)
    job = build.build_job(
        nstjax.Settings(size=64, steps=8, conv_impl="xla", preserve_color="luminance"),
        c, [s], real_weights,
    )  # fmt: skip
    assert job.init_1xHxWx3.shape[-1] == 1  # the optimization runs on luminance
    out, m = nstjax.stylize(c, s, weights=real_weights, size=64, steps=8, conv_impl="xla",
                            preserve_color="luminance")  # fmt: skip
    content = image.load(c, long_side=64)
    yiq_out, yiq_c = color.rgb_to_yiq(out.astype(np.float32)), color.rgb_to_yiq(content)
    inside = np.all((out > 0) & (out < 255), axis=-1)  # where recombination did not clip
    assert inside.mean() > 0.8
    # I, Q equal to 8-bit rounding: each channel rounds by <= 0.5, |I row| < 1.2
    assert np.abs(yiq_out[..., 1:] - yiq_c[..., 1:])[inside].max() <= 0.6
    assert np.abs(yiq_out[..., 0] - yiq_c[..., 0]).mean() > 2  # the luminance did change
    assert m["final"]["style_loss"] < m["style_loss"][0]


def test_histogram_matching_recolours_the_style(images, real_weights):
    c, s = _pair(images)
    content = image.load(c, long_side=64)
    style = image.load(s, long_side=64)
    for transfer in ("cholesky", "sym", "pca"):
        settings = nstjax.Settings(size=64, preserve_color="histogram", color_transfer=transfer)
        _, (styled,), _ = inputs.color_inputs(settings, content, [style])
        px, pc = styled.reshape(-1, 3).astype(np.float64), content.reshape(-1, 3).astype(float)
        np.testing.assert_allclose(px.mean(0), pc.mean(0), rtol=1e-3)
        np.testing.assert_allclose(
            np.cov(px.T), np.cov(pc.T), rtol=1e-3, atol=1e-3 * np.cov(pc.T).max()
        )
    out, m = nstjax.stylize(c, s, weights=real_weights, size=64, steps=4, conv_impl="xla",
                            preserve_color="histogram")  # fmt: skip
    assert out.shape == (43, 64, 3) and np.isfinite(m["final"]["loss"])
