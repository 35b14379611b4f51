"""Tiled gradients (nstjax.tiles): the geometry, and tiled == untiled where both fit."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import nstjax
from nstjax import build, engine, objective, tiles, vgg
from nstjax.errors import UsageError


def test_receptive_radius_and_halo():
    # each 3x3 convolution adds its downsampling: 1+1, 2+2, 4x4, 8x4, 16
    assert vgg.receptive_radius("relu1_1") == 1
    assert vgg.receptive_radius("relu2_1") == 4
    assert vgg.receptive_radius("relu4_2") == 2 + 4 + 16 + 16
    assert vgg.receptive_radius("relu5_1") == 70
    assert vgg.halo(("relu1_1", "relu5_1")) == 80
    assert vgg.halo(("relu3_1",)) == 16


@pytest.mark.parametrize("hw", [(256, 256), (100, 76), (33, 170)])
def test_cores_partition_the_image(hw):
    h, w = hw
    grid = tiles.grid(h, w, 32, 16)
    owner = np.zeros((h, w), int)
    for t in grid:
        owner[t.cy0 : t.cy1, t.cx0 : t.cx1] += 1
        assert 0 <= t.y0 <= t.cy0 < t.cy1 <= t.y1 <= h and 0 <= t.x0 <= t.cx0 < t.cx1 <= t.x1 <= w
        assert t.y0 % tiles.ALIGN == 0 and t.x0 % tiles.ALIGN == 0  # pooling grids line up
        # the core's features are exact: a halo on every side inside the image
        assert (t.cy0 - t.y0 >= 16 or t.y0 == 0) and (t.y1 - t.cy1 >= 16 or t.y1 == h)
        assert (t.cx0 - t.x0 >= 16 or t.x0 == 0) and (t.x1 - t.cx1 >= 16 or t.x1 == w)
    assert (owner == 1).all()
    # one crop size per axis, plus one reaching the end where the side is not aligned
    assert len({t.geometry for t in grid}) <= (1 + (h % 16 > 0)) * (1 + (w % 16 > 0))
    if h % 16 == 0 and w % 16 == 0:
        assert len({t.geometry for t in grid}) == 1
    with pytest.raises(UsageError, match="multiple of 16"):
        tiles.grid(h, w, 40, 16)


def _job(images, weights, size, styles=("starry_night.jpg",), **kw):
    s = nstjax.Settings(size=size, steps=2, conv_impl="xla", **kw)
    return build.build_job(s, images / "tubingen.jpg", [images / x for x in styles], weights)


def _untiled(job, image_R, ctx):
    obj = job.program.objective

    def one(image, r):
        return objective.loss(obj, image, ctx["vgg"], r["targets"], r["weights"])

    (total, parts), grad = jax.vmap(jax.value_and_grad(one, has_aux=True))(image_R, ctx["runs"])
    return np.asarray(total), np.asarray(grad)


def _compare(job, tile, state=None):
    _, state0, ctx = engine.single_runner(job, loop="host")
    image = state0["image"] if state is None else state
    total, grad = _untiled(job, image, ctx)
    tiled = tiles.TiledRunner(job.program.objective, job.program.opt, tile, state0, ctx)
    t_total, rec, t_grad = tiled.loss_and_grad(image, ctx)
    t_grad = np.asarray(t_grad)
    np.testing.assert_allclose(np.asarray(t_total), total, rtol=1e-5)
    assert np.abs(grad).max() > 0
    err = np.abs(t_grad - grad).max() / np.abs(grad).max()
    assert err < 1e-4, err
    return tiled


def test_tiled_gradient_equals_untiled_at_256(images, real_weights):
    """The Gatys objective (content relu4_2, Gram on relu1_1..relu5_1, TV) at 256x256 in
    4 tiles of 128 px (halo 80): loss to 1e-5, gradient to 1e-4 of its largest entry."""
    job = _job(images, real_weights, 256, content_layers=("relu4_2",),
               style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
               tv_weight=1e-3)  # fmt: skip
    assert job.init_1xHxWx3.shape[1:3] == (192, 256) or job.init_1xHxWx3.shape[1:3] == (256, 256)
    noisy = job.init_1xHxWx3 + np.random.default_rng(0).normal(0, 20, job.init_1xHxWx3.shape)
    tiled = _compare(job, 128, np.asarray(noisy[None], np.float32))
    assert len(tiled.tiles) == 2 * 2 or len(tiled.tiles) == 2 * 2


def test_tiled_odd_sizes_caffe_pooling_and_meanstd(images, real_weights):
    """Odd sizes with Caffe's ceil pooling, the BN-statistics term (no blend: scored per
    style image), two style images, many small tiles."""
    job = _job(images, real_weights, 100, ("starry_night.jpg", "the_scream.jpg"),
               style_blend=(0.7, 0.3), content_layers=("relu3_1",),
               style_layers=("relu1_1", "relu2_1", "relu3_1"), pool_rounding="ceil",
               style_loss=("gram", "meanstd:weight=1e4"), tv_weight=1e-3)  # fmt: skip
    assert job.program.objective.ceil_mode
    tiled = _compare(job, 32)
    assert len(tiled.tiles) >= 6


def test_untileable_terms_are_refused():
    from nstjax.weights.preprocessing import CAFFE

    def objective_of(**kw):
        return build.objective_for(nstjax.Settings(**kw), CAFFE)[0]

    for kw, message in (({"style_loss": ("sliced_w2",)}, r"tiled; tiles work with: .*'gram'"),
                        ({"style_loss": ("gram", "mrf")}, r"\['style/mrf'\] cannot be tiled"),
                        ({"style_layers": ("relu1_1", "pool5")}, "pool5"),
                        ({}, "smaller than its halo")):  # fmt: skip
        with pytest.raises(UsageError, match=message):
            tiles.supported(objective_of(**kw), 32)
    tiles.supported(objective_of(style_loss=("gram", "meanstd"), tv_weight=1.0), 80)


def test_stylize_tiled_run_matches_untiled(images, real_weights, tmp_path):
    """A whole run through the engine (a 64 -> 128 pyramid; the 128 level in tiles of 64,
    the 64 level whole): the same images and losses as untiled, to float32 drift."""
    s = nstjax.Settings(scales=(64, 128), scale_steps=(2, 3), conv_impl="xla", memory_size=5,
                        style_layers=("relu1_1", "relu2_1", "relu3_1"), content_layers=("relu3_1",),
                        tv_weight=1e-3)  # fmt: skip
    content, style = images / "tubingen.jpg", images / "starry_night.jpg"
    out, m = nstjax.stylize(content, style, settings=s.replace(tile=64), weights=real_weights,
                            output=tmp_path / "tiled.png")  # fmt: skip
    ref, m_ref = nstjax.stylize(content, style, settings=s, weights=real_weights)
    assert out.shape == ref.shape == (96, 128, 3)
    assert np.abs(out.astype(float) - ref.astype(float)).mean() < 0.5
    assert m["settings"]["tile"] == 64 and m["memory_estimate"]["tile_hw"] == (96, 96)
    np.testing.assert_allclose(m["final"]["loss"], m_ref["final"]["loss"], rtol=1e-3)
    np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-3)
    assert (tmp_path / "tiled.png").is_file()


def test_tile_settings_are_checked(images, tmp_path, capsys):
    from nstjax import cli

    base = ["stylize", "--content", str(images / "tubingen.jpg"), "--style",
            str(images / "starry_night.jpg"), "--output", str(tmp_path / "o.png"),
            "--size", "64"]  # fmt: skip
    cases = ((["--tile", "40"], "multiple of 16"),
             (["--tile", "32", "--line-search", "5"], "line_search"),
             (["--tile", "32", "--style-loss", "mrf"], "cannot be tiled"),
             (["--tile", "32"], "smaller than its halo (80 px"),
             (["--tile", "32", "--style-layers", "relu1_1,pool5"], "pool5"))  # fmt: skip
    for extra, message in cases:
        assert cli.main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o.png").exists()
