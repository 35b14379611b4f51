"""Coarse-to-fine pyramids and iterate averaging."""

from __future__ import annotations

import json

import numpy as np

import nstjax
from nstjax import configs, runner

KW = dict(conv_impl="xla", style_layers=("relu1_1", "relu2_1", "relu3_1"))


def test_pyramid_runs_level_by_level(images, real_weights, tmp_path):
    pair = (images / "tubingen.jpg", images / "starry_night.jpg")
    out, m = nstjax.stylize(*pair, weights=real_weights, scales=(32, 64), scale_steps=(6, 4),
                            output=tmp_path / "o.png", save_every=5, **KW)  # fmt: skip
    assert out.shape == (48, 64, 3) and m["steps"] == 10 and len(m["loss"]) == 10
    assert [lv["size"] for lv in m["levels"]] == [32, 64]
    assert [lv["first_step"] for lv in m["levels"]] == [0, 6]
    assert (tmp_path / "o_00005.png").is_file()  # saves count steps across levels
    # level 2 starts from level 1's result, not from the content image
    _, fresh = nstjax.stylize(*pair, weights=real_weights, size=64, steps=1, **KW)
    assert abs(m["loss"][6] - fresh["loss"][0]) > 1e-3 * fresh["loss"][0]
    assert m["final"]["loss"] == m["levels"][-1]["final_loss"]


def test_upsample_carries_the_image():
    from nstjax import inputs

    x = np.random.default_rng(0).uniform(0, 255, (12, 16, 1)).astype(np.float32)
    up = inputs.upsample(x, (24, 32))
    assert up.shape == (24, 32, 1)
    block_means = up[..., 0].reshape(12, 2, 16, 2).mean(axis=(1, 3))
    corr = np.corrcoef(block_means.ravel(), x[..., 0].ravel())[0, 1]
    assert corr > 0.9
    assert abs(up.mean() - x.mean()) < 1.0


def test_ema_zero_is_the_iterate_and_ema_averages(images, real_weights):
    pair = (images / "tubingen.jpg", images / "starry_night.jpg")
    kw = dict(weights=real_weights, size=32, steps=6, optimizer="adam", **KW)
    a, ma = nstjax.stylize(*pair, **kw)
    b, mb = nstjax.stylize(*pair, ema=0.0, **kw)
    c, mc = nstjax.stylize(*pair, ema=0.9, **kw)
    assert a.tobytes() == b.tobytes() and ma["loss"] == mb["loss"]
    assert mc["loss"] == ma["loss"]  # the iterates are the same; only the output averages
    assert np.abs(a.astype(float) - c).mean() > 1.0
    assert mc["final"]["loss"] != ma["final"]["loss"]  # scored at the written average


def test_pyramid_in_a_sweep(images, tmp_path, cache_env):
    config = configs.base_config("runlocal").unlock()
    config.settings.update(dict(KW, scales=(16, 32), scale_steps=(2, 2)))
    summary = runner.run(config.lock(), tmp_path / "w", lambda add: [add(seed=0), add(seed=1)],
                         progress=False)  # fmt: skip
    assert summary["ran"] == 2 and summary["groups"] == 2
    m = json.loads((tmp_path / "w" / "variants" / "000" / "metrics.json").read_text())
    assert m["steps"] == 4 and [lv["size"] for lv in m["levels"]] == [16, 32]
    csv = (tmp_path / "w" / "variants" / "000" / "losses.csv").read_text().splitlines()
    assert len(csv) == 5
