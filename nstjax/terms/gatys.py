"""The three terms of Gatys et al. (2016) as registered kinds: ``mse``, ``gram``, ``tv``.

The formulas live in :mod:`nstjax.losses`; this module only registers them.
"""

from __future__ import annotations

import jax.numpy as jnp

from nstjax import losses
from nstjax.terms.registry import register


def _content_targets(feat_1xHxWxC, out_shape):
    del out_shape  # the content image is the output's size
    return feat_1xHxWxC


def _content_loss(feat_BxHxWxC, target_1xHxWxC, key):
    del key
    return losses.content_layer_loss(feat_BxHxWxC, target_1xHxWxC)


def _gram_targets(feat_1xHxWxC, out_shape, norm):
    """The style image's Gram per position, times the output's positions M.

    A Gram sums over positions, so a style image of M_s positions gives Grams M_s/M
    times those of an M-position image with the same statistics; rescaling by M/M_s
    makes style images of any size comparable with the output.
    """
    del norm
    _, h, w, _ = feat_1xHxWxC.shape
    return losses.gram(feat_1xHxWxC) / (h * w) * (out_shape[0] * out_shape[1])


def _gram_blend(targets, weights):
    """Several style images: the weighted sum of their Grams (as neural-style does)."""
    total = None
    for t, w in zip(targets, weights, strict=True):
        total = t * w if total is None else total + t * w
    return total


def _gram_loss(feat_BxHxWxC, target_1xCxC, key, norm):
    del key
    return losses.style_layer_loss(feat_BxHxWxC, target_1xCxC, norm)


def _gram_masked_targets(feat_1xHxWxC, mask_HxW, out_shape, norm):
    """Guided Gram of a style image (Gatys et al. 2017, eq. 4-5): the Gram of the
    mask-weighted features, per unit of mask area (the region's "mean" Gram)."""
    del out_shape, norm
    w_HxW = jnp.square(mask_HxW)
    g = jnp.einsum("bhwc,hw,bhwd->bcd", feat_1xHxWxC, w_HxW, feat_1xHxWxC)
    return g / jnp.maximum(jnp.sum(w_HxW), 1e-8)


def _gram_masked_loss(feat_BxHxWxC, target_1xCxC, mask_HxW, key, norm):
    """The guided Gram of the output's region against the style's, both at the region's
    area M_r (so an all-ones mask gives exactly the unguided loss)."""
    del key
    w_HxW = jnp.square(mask_HxW)
    area = jnp.maximum(jnp.sum(w_HxW), 1e-8)
    g = jnp.einsum("bhwc,hw,bhwd->bcd", feat_BxHxWxC, w_HxW, feat_BxHxWxC)
    sq_B = jnp.sum(jnp.square(g - target_1xCxC * area), axis=(1, 2))
    return losses.GRAM_NORMS[norm](sq_B, float(feat_BxHxWxC.shape[-1]), area)


def _content_tile_stats(feat_BxHxWxC, target_1xHxWxC, weight_HxW):
    """Eq. 1 is a sum over positions: a tile's share is eq. 1 on its own positions."""
    sq = jnp.square(feat_BxHxWxC - target_1xHxWxC)
    return 0.5 * jnp.einsum("bhwc,hw->b", sq, weight_HxW)


def _content_tile_loss(stats_B, target, hw):
    del target, hw
    return stats_B


def _gram_tile_stats(feat_BxHxWxC, target_1xCxC, weight_HxW, norm):
    """A Gram is a sum over positions: a tile's share is the Gram of its positions."""
    del target_1xCxC, norm
    return jnp.einsum("bhwc,hw,bhwd->bcd", feat_BxHxWxC, weight_HxW, feat_BxHxWxC)


def _gram_tile_loss(gram_BxCxC, target_1xCxC, hw, norm):
    """:func:`losses.style_layer_loss` from the whole image's Gram (``hw``: its M)."""
    sq_B = jnp.sum(jnp.square(gram_BxCxC - target_1xCxC), axis=(1, 2))
    return losses.GRAM_NORMS[norm](sq_B, float(gram_BxCxC.shape[-1]), float(hw[0] * hw[1]))


def _tv_loss(pixels_BxHxWx3, target, key):
    del target, key
    return losses.tv_loss(pixels_BxHxWx3)


register(
    "mse",
    role="content",
    targets=_content_targets,
    loss=_content_loss,
    tile_stats=_content_tile_stats,
    tile_loss=_content_tile_loss,
    tile_target="positions",
    doc="1/2 sum (F - P)^2 over a layer's positions and channels (Gatys et al. 2016, eq. 1)",
)
register(
    "gram",
    role="style",
    targets=_gram_targets,
    loss=_gram_loss,
    blend=_gram_blend,
    options={"norm": "gatys"},
    check=lambda norm: losses.check_gram_norm(norm),
    masked_targets=_gram_masked_targets,
    masked_loss=_gram_masked_loss,
    tile_stats=_gram_tile_stats,
    tile_loss=_gram_tile_loss,
    doc="squared Frobenius distance of Gram matrices, normalized by `norm` "
    "(gatys: 1/(4 N^2 M^2), Gatys et al. 2016, eq. 4; n; hw; chw)",
)
register(
    "tv",
    role="image",
    loss=_tv_loss,
    reads="pixels",
    doc="total variation: squared differences of neighbouring pixels, pixel units",
)
