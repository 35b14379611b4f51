"""The histogram style term ``hist`` (Risser, Wilmot & Barnes, "Stable and Controllable
Neural Texture Synthesis and Style Transfer Using Histogram Losses", arXiv 1701.08893,
2017): each channel of the output's features remapped to the style's histogram, and the
squared distance to the remapped features, with no gradient through the remap.
Conventions as in :mod:`nstjax.terms.stats` (per batch element, means over positions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from nstjax.terms.registry import register
from nstjax.terms.stats import bounds, flat, sort_nograd


def _hist_targets(feat_1xHxWxC, out_shape, bins):
    """Each channel's sorted style values, ``C x M_s`` (its empirical quantiles)."""
    del out_shape, bins
    return sort_nograd(flat(feat_1xHxWxC)[0].T)


def hist_remap(o_CxM: jax.Array, sorted_style_CxMs: jax.Array, bins: int) -> jax.Array:
    """Histogram matching of each row of ``o`` to the style's distribution::

        R(o) = Q_y(F_o(o))

    F_o: the row's cumulative histogram with ``bins`` equal bins over [min, max],
    linear within each bin (a continuous, monotone CDF); Q_y: the style's empirical
    quantile function (sorted values at plotting positions (k + 1/2)/M_s, linear in
    between, clamped at the ends). A constant row maps to the style's median.
    O(M) per row (a histogram and two gathers): no sort of the output.
    """
    c, m = o_CxM.shape
    ms = sorted_style_CxMs.shape[-1]
    lo = o_CxM.min(axis=1, keepdims=True)
    hi = o_CxM.max(axis=1, keepdims=True)
    flat_range = hi <= lo
    width = jnp.where(flat_range, 1.0, (hi - lo) / bins)
    pos = (o_CxM - lo) / width
    b = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, bins - 1)
    frac = jnp.where(flat_range, 0.5, jnp.clip(pos - b, 0.0, 1.0))
    rows = lax.broadcasted_iota(jnp.int32, (c, m), 0)
    counts = jnp.bincount((b + bins * rows).reshape(-1), length=c * bins).reshape(c, bins)
    p = counts.astype(jnp.float32) / m
    left = jnp.cumsum(p, axis=1) - p
    u = jnp.take_along_axis(left, b, axis=1) + frac * jnp.take_along_axis(p, b, axis=1)
    t = jnp.clip(u * ms - 0.5, 0.0, ms - 1.0)
    i0 = jnp.floor(t).astype(jnp.int32)
    i1 = jnp.minimum(i0 + 1, ms - 1)
    w = t - i0
    q0 = jnp.take_along_axis(sorted_style_CxMs, i0, axis=1)
    q1 = jnp.take_along_axis(sorted_style_CxMs, i1, axis=1)
    return q0 * (1.0 - w) + q1 * w


CHUNK_ELEMENTS = 1 << 20
""":func:`hist_loss` remaps at most about this many values at once (a loop over channel
groups): :func:`hist_remap` keeps ~10 arrays of the rows' size alive (bin indices,
fractions, gathered quantiles), which for all of relu1_1 at 512x384 (64 channels x
196,608 positions) were 550 MiB of the distance panel's temporaries."""


def _divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, max(1, min(n, k)) + 1) if n % d == 0)


def hist_remap_chunked(o_CxM: jax.Array, sorted_style_CxMs: jax.Array, bins: int) -> jax.Array:
    """:func:`hist_remap` over groups of channels in turn, each of at most
    :data:`CHUNK_ELEMENTS` values (a group size that divides C: reshapes, no copies)."""
    c, m = o_CxM.shape
    rows = _divisor_at_most(c, CHUNK_ELEMENTS // m)
    if rows == c:
        return hist_remap(o_CxM, sorted_style_CxMs, bins)
    groups = (o_CxM.reshape(c // rows, rows, m), sorted_style_CxMs.reshape(c // rows, rows, -1))
    return lax.map(lambda g: hist_remap(g[0], g[1], bins), groups).reshape(c, m)


def hist_loss(feat_BxHxWxC, sorted_style_CxMs, key, bins):
    """Histogram loss (Risser et al. 2017, eq. 3)::

        E = 1/(C M) sum_c ||O_c - R(O_c)||^2,   R = histogram matching (:func:`hist_remap`)

    with no gradient through R (the paper treats the remapped activations as a
    constant target): dE/dO = 2 (O - R(O)) / (C M). Risser et al. use 256 bins. The
    remap is exact-quantile on the style side (sorted once per run) and binned on the
    output side, so a step costs O(M C) with no sort, at every position. With exact
    ranks instead of bins (bins -> infinity) E is the mean over channels of the 1-D W2^2
    between output and style values.
    """
    del key
    x = flat(feat_BxHxWxC)

    def one(xi):
        o = xi.T
        r = lax.stop_gradient(hist_remap_chunked(lax.stop_gradient(o), sorted_style_CxMs, bins))
        return jnp.mean(jnp.square(o - r))

    return jax.vmap(one)(x)


# --------------------------------------------------------------------------- registry


register(
    "hist",
    role="style",
    targets=_hist_targets,
    loss=hist_loss,
    options={"bins": 256},
    check=bounds(at_least={"bins": 2}),
    doc="1/(CM) ||O - R(O)||^2, R: per-channel histogram matching to the style, no gradient "
    "through R (Risser et al. 2017)",
)
