"""Spatial control (Gatys et al. 2017, Sec. 4): region masks and guided Gram matrices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nstjax
from nstjax import losses, masks, objective
from nstjax.errors import UsageError


def test_layer_masks_follow_the_network():
    m = np.zeros((8, 8), np.float32)
    m[:, :4] = 1.0  # left half inside
    mean = masks.layer_masks(m, ["relu1_1", "pool1", "relu2_1"], "mean")
    np.testing.assert_array_equal(mean["relu1_1"], m)
    np.testing.assert_array_equal(mean["pool1"], m.reshape(4, 2, 4, 2).mean(axis=(1, 3)))
    inside = masks.layer_masks(m, ["relu1_1", "relu1_2"], "inside")
    # one 3x3 erosion per conv: the border column of the region goes at each conv
    assert inside["relu1_1"][:, 3].max() == 0 and inside["relu1_1"][:, 2].min() == 1
    assert inside["relu1_2"][:, 2].max() == 0 and inside["relu1_2"][:, 1].min() == 1
    assert inside["relu1_1"][0, 0] == 1  # the image border does not erode
    odd = masks.layer_masks(np.ones((5, 7), np.float32), ["pool1"], "mean", ceil_mode=True)
    assert odd["pool1"].shape == (3, 4) and np.all(odd["pool1"] == 1)


def test_guided_gram_with_a_full_mask_is_the_plain_gram():
    rng = np.random.default_rng(0)
    f = jnp.asarray(rng.normal(size=(1, 6, 5, 4)), jnp.float32)
    style = jnp.asarray(rng.normal(size=(1, 9, 7, 4)), jnp.float32)
    kind = nstjax.terms.get("gram")
    plain_t = kind.targets(style, (6, 5, 4), norm="gatys")
    masked_t = kind.masked_targets(style, jnp.ones((9, 7)), (6, 5, 4), norm="gatys")
    plain = kind.loss(f, plain_t, None, norm="gatys")
    masked = kind.masked_loss(f, masked_t, jnp.ones((6, 5)), None, norm="gatys")
    np.testing.assert_allclose(np.asarray(masked), np.asarray(plain), rtol=1e-5)
    # a half mask: the region's Gram over its area, as the paper normalizes it
    half = jnp.zeros((6, 5)).at[:3].set(1.0)
    got = kind.masked_loss(f, masked_t, half, None, norm="gatys")
    g = np.einsum("hwc,hwd->cd", np.asarray(f[0, :3]), np.asarray(f[0, :3]))
    a = np.asarray(masked_t[0]) * 15
    want = losses.GRAM_NORMS["gatys"](np.sum((g - a) ** 2), 4.0, 15.0)
    np.testing.assert_allclose(float(got[0]), want, rtol=1e-4)


def _region_gram(params, prep, img, mask, layer="relu2_1"):
    feats = nstjax.features(params, prep.to_network(jnp.asarray(img, jnp.float32)[None]), [layer])
    f = np.asarray(feats[layer][0], np.float64)
    m = masks.layer_masks(mask, [layer], "inside")[layer].astype(np.float64)
    g = np.einsum("hwc,hw,hwd->cd", f, m, f) / max(m.sum(), 1.0)
    return g


def test_two_regions_take_their_own_styles(images, real_weights):
    g17 = images / "gatys2017"
    content = str(images / "tubingen.jpg")
    styles = [str(g17 / "fig2_style1.jpg"), str(images / "the_scream.jpg")]
    sky = str(images / "tubingen_sky.png")
    out, m = nstjax.stylize(
        content, styles, weights=real_weights, size=64, steps=40, conv_impl="xla",
        masks=(sky, "!" + sky), style_layers=("relu1_1", "relu2_1", "relu3_1"),
        content_weight=1e-4, style_weight=1.0,
    )  # fmt: skip
    assert m["terms"]["style/gram"][-1] < 0.3 * m["terms"]["style/gram"][0]
    from nstjax import image

    prep = real_weights.preprocessing
    params = jax.tree.map(jnp.asarray, real_weights.params)
    region = [masks.load(sky, out.shape[:2]), masks.load("!" + sky, out.shape[:2])]
    style_imgs = [image.load(s, long_side=64) for s in styles]
    style_g = [_region_gram(params, prep, s, np.ones(s.shape[:2], np.float32)) for s in style_imgs]
    for r in range(2):
        g = _region_gram(params, prep, out.astype(np.float32), region[r])
        own, other = (np.linalg.norm(g - style_g[k]) for k in (r, 1 - r))
        assert own < other, (r, own, other)


def test_masks_need_a_capable_term_and_matching_counts(images, real_weights):
    with pytest.raises(UsageError, match="pairs style image r with mask r"):
        nstjax.stylize(images / "tubingen.jpg", [images / "the_scream.jpg"],
                       weights=real_weights, size=32, steps=1,
                       masks=(str(images / "tubingen_sky.png"),) * 2)  # fmt: skip
    obj_terms = (nstjax.Term("mse", "content/mse", ("relu4_2",)),)
    with pytest.raises(UsageError, match="needs at least one"):
        objective.Objective((), regions=1)
    assert objective.Objective(obj_terms, regions=0).regions == 0
