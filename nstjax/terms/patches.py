"""Terms that compare *point sets* of features: patches, transport, self-similarity.

Registered kinds:

* ``mrf``          (style) nearest-neighbour patch matching (Li & Wand 2016);
* ``relaxed_emd``  (style) relaxed earth mover's distance with cosine cost plus the
  moment term of STROTSS (Kolkin et al. 2019);
* ``selfsim``      (content) L1 distance of normalized self-similarity matrices
  (STROTSS's content loss).

References:

* C. Li, M. Wand, "Combining Markov Random Fields and Convolutional Neural Networks for
  Image Synthesis", CVPR 2016.
* N. Kolkin, J. Salavon, G. Shakhnarovich, "Style Transfer by Relaxed Optimal Transport
  and Self-Similarity", CVPR 2019 (and the authors' code, github.com/nkolkin13/STROTSS).

All three compare every output position with every reference position: O(N K C) time
and O(N K) memory for N output and K reference points. Each bounds both with the
``samples`` option: every step draws that many positions (patches) of the output and
of the reference from ``key`` (all of them where a layer has fewer, and then the term
is deterministic), so a step costs O(samples^2 C) whatever the image size (the
STROTSS authors sample 1024 positions the same way); the positions not drawn get no
gradient that step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from nstjax.terms.registry import register
from nstjax.terms.stats import bounds, flat, gather_positions, sample_positions

NORM_EPS = 1e-8
"""Norms are ``sqrt(|v|^2 + NORM_EPS)``: a zero feature vector (all ReLUs off) has cosine
0 with everything instead of NaN."""


def _unit(v_NxD: jax.Array) -> jax.Array:
    return v_NxD / jnp.sqrt(jnp.sum(jnp.square(v_NxD), axis=-1, keepdims=True) + NORM_EPS)


def cosine_distance(a_NxC: jax.Array, b_KxC: jax.Array) -> jax.Array:
    """``1 - cos(a_i, b_j)`` as N x K."""
    return 1.0 - jnp.einsum(
        "nc,kc->nk", _unit(a_NxC), _unit(b_KxC), preferred_element_type=jnp.float32
    )


# --------------------------------------------------------------------------- mrf


def patch_size(patch: int, out_hw, style_hw) -> int:
    """``patch``, or 1 (single feature vectors) where a map is smaller than a patch."""
    if min(*out_hw, *style_hw) < patch:
        return 1
    return patch


def patch_grid(h: int, w: int, k: int) -> tuple[int, int]:
    """Top-left corners of the k x k patches inside an h x w map (valid, stride 1)."""
    return h - k + 1, w - k + 1


def extract_patches(feat_HxWxC: jax.Array, idx: jax.Array | None, k: int) -> jax.Array:
    """The k x k patches at flat corner indices ``idx`` (None: all), as N x (k k C),
    ordered (dy, dx, c)."""
    h, w, c = feat_HxWxC.shape
    gh, gw = patch_grid(h, w, k)
    if idx is None:
        idx = jnp.arange(gh * gw)
    r, col = idx // gw, idx % gw
    d = jnp.arange(k)
    rows = r[:, None, None] + d[None, :, None]
    cols = col[:, None, None] + d[None, None, :]
    return feat_HxWxC[rows, cols].reshape(idx.shape[0], k * k * c)


def mrf_draw(key, out_hw, style_hw, patch: int, samples: int):
    """``mrf``'s patch size and the output / style patch corners for ``key``."""
    k = patch_size(patch, out_hw, style_hw)
    kx, ky = jax.random.split(key)
    nx = patch_grid(*out_hw, k)
    ny = patch_grid(*style_hw, k)
    return (
        k,
        sample_positions(kx, nx[0] * nx[1], samples),
        sample_positions(ky, ny[0] * ny[1], samples),
    )


def _style_map_targets(feat_1xHxWxC, out_shape, **options):
    """The style's feature map ``H_s x W_s x C`` (the loss samples its patches)."""
    del out_shape, options
    return feat_1xHxWxC[0]


def mrf_loss(feat_BxHxWxC, style_HsxWsxC, key, patch, samples):
    """MRF loss (Li & Wand 2016, eq. 2-3)::

        E = 1/N sum_i ||Psi_i(x) - Psi_NN(i)(y)||^2
        NN(i) = argmax_j <Psi_i(x), Psi_j(y)> / (|Psi_i(x)| |Psi_j(y)|)

    Psi_i: the ``patch`` x ``patch`` (3 x 3 in the paper) feature patch at i, stride 1,
    inside the map; each output patch is matched to the style patch of highest
    normalized cross-correlation, held fixed for the step (no gradient through the
    choice), and pulled towards it. A mean over patches (the paper sums). Maps smaller
    than a patch use single feature vectors (1 x 1 patches).

    Memory and cost: ``samples`` output patches and ``samples`` style patches per step
    (see the module docstring): the correlation matrix is samples x samples, O(samples^2
    patch^2 C) time.
    """
    _, h, w, _ = feat_BxHxWxC.shape
    k, ix, iy = mrf_draw(key, (h, w), style_HsxWsxC.shape[:2], patch, samples)
    py = lax.stop_gradient(extract_patches(style_HsxWsxC, iy, k))
    py_unit = _unit(py)

    def one(fi):
        px = extract_patches(fi, ix, k)
        ncc = jnp.einsum(
            "nd,kd->nk", _unit(lax.stop_gradient(px)), py_unit, preferred_element_type=jnp.float32
        )
        nn = jnp.argmax(ncc, axis=1)
        return jnp.mean(jnp.sum(jnp.square(px - py[nn]), axis=-1))

    return jax.vmap(one)(feat_BxHxWxC)


# --------------------------------------------------------------------------- relaxed_emd


def _emd_targets(feat_1xHxWxC, out_shape, samples, moments):
    """The style's feature vectors, mean and unbiased covariance (as STROTSS's code)."""
    del out_shape, samples, moments
    y = flat(feat_1xHxWxC)[0]
    return {"y": y, "mean": y.mean(axis=0), "cov": _cov_unbiased(y)}


def _cov_unbiased(v_MxC):
    vc = v_MxC - v_MxC.mean(axis=0)
    n = max(v_MxC.shape[0] - 1, 1)
    return jnp.einsum("mc,md->cd", vc, vc, preferred_element_type=jnp.float32) / n


def emd_draw(key, m: int, m_s: int, samples: int):
    """``relaxed_emd``'s output and style positions for ``key`` (None: all)."""
    kx, ky = jax.random.split(key)
    return sample_positions(kx, m, samples), sample_positions(ky, m_s, samples)


def relaxed_emd_loss(feat_BxHxWxC, target, key, samples, moments):
    """STROTSS style loss without its palette term (Kolkin et al. 2019, eq. 3-6)::

        l_r = max(1/N sum_i min_j C_ij, 1/K sum_j min_i C_ij),  C_ij = 1 - cos(x_i, y_j)
        l_m = 1/C ||mu_x - mu_y||_1 + 1/C^2 ||S_x - S_y||_1
        E   = l_r + moments * l_m

    l_r is the relaxed earth mover's distance (each side's mass moved to its nearest
    points: a lower bound of the EMD), l_m the moment term; S: unbiased covariances, as
    the authors' code. The paper uses hypercolumns of several layers; here the term is
    per layer, with the term's layer weights. With Caffe-scale VGG features (inputs
    0..255) l_m is in feature units squared and dominates l_r (in [0, 2]) at shallow
    layers; ``moments`` rescales it.

    Memory and cost: l_r on ``samples`` output and style positions per step (see the
    module docstring), O(samples^2 C); l_m exactly, on all positions, O(M C^2).
    """
    x = flat(feat_BxHxWxC)
    y = target["y"]
    ix, iy = emd_draw(key, x.shape[1], y.shape[0], samples)
    xs = gather_positions(x, ix)
    ys = y if iy is None else jnp.take(y, iy, axis=0)

    def one(xi, xsi):
        cost = cosine_distance(xsi, ys)
        remd = jnp.maximum(cost.min(axis=1).mean(), cost.min(axis=0).mean())
        mean_d = jnp.mean(jnp.abs(xi.mean(axis=0) - target["mean"]))
        cov_d = jnp.mean(jnp.abs(_cov_unbiased(xi) - target["cov"]))
        return remd + moments * (mean_d + cov_d)

    return jax.vmap(one)(x, xs)


# --------------------------------------------------------------------------- selfsim


def _selfsim_targets(feat_1xHxWxC, out_shape, samples):
    """The content's feature vectors ``M x C`` (the output's size)."""
    del out_shape, samples
    return flat(feat_1xHxWxC)[0]


def self_similarity(v_NxC: jax.Array) -> jax.Array:
    """Cosine distances ``D_ij = 1 - cos(v_i, v_j)``, each column divided by its sum."""
    d = cosine_distance(v_NxC, v_NxC)
    return d / (jnp.sum(d, axis=0, keepdims=True) + NORM_EPS)


def selfsim_draw(key, m: int, samples: int):
    """``selfsim``'s positions for ``key`` (the same in output and content; None: all)."""
    return sample_positions(key, m, samples)


def selfsim_loss(feat_BxHxWxC, content_MxC, key, samples):
    """STROTSS content loss (Kolkin et al. 2019, eq. 7)::

        E = 1/N sum_{i,j} | D^x_ij / sum_i D^x_ij - D^c_ij / sum_i D^c_ij |

    D_ij = 1 - cos(f_i, f_j): the self-similarity (cosine distance) matrix of the
    output's (x) and the content's (c) feature vectors at the same N positions. The
    paper writes 1/N^2; the authors' code multiplies the mean by N (as here), which
    keeps E in [0, 2] whatever N. Invariant to the features' scale.

    Memory and cost: ``samples`` positions per step, the same for output and content
    (see the module docstring): two N x N matrices, O(samples^2 C).
    """
    x = flat(feat_BxHxWxC)
    idx = selfsim_draw(key, x.shape[1], samples)
    xs = gather_positions(x, idx)
    cs = content_MxC if idx is None else jnp.take(content_MxC, idx, axis=0)
    dc = self_similarity(cs)

    def one(xsi):
        return jnp.sum(jnp.abs(self_similarity(xsi) - dc)) / xsi.shape[0]

    return jax.vmap(one)(xs)


# --------------------------------------------------------------------------- registry

register(
    "mrf",
    role="style",
    targets=_style_map_targets,
    loss=mrf_loss,
    options={"patch": 3, "samples": 1024},
    stochastic=True,
    check=bounds(at_least={"patch": 1, "samples": 1}),
    doc="1/N sum_i ||patch_i - nearest style patch (normalized cross-correlation)||^2, "
    "`samples` patches per side per step (Li & Wand 2016, CVPR)",
)
register(
    "relaxed_emd",
    role="style",
    targets=_emd_targets,
    loss=relaxed_emd_loss,
    options={"samples": 1024, "moments": 1.0},
    stochastic=True,
    check=bounds(at_least={"samples": 1, "moments": 0.0}),
    doc="relaxed EMD with cosine cost + moments * (mean, covariance L1) "
    "(STROTSS, Kolkin et al. 2019, CVPR); `samples` positions per side per step",
)
register(
    "selfsim",
    role="content",
    targets=_selfsim_targets,
    loss=selfsim_loss,
    options={"samples": 1024},
    stochastic=True,
    check=bounds(at_least={"samples": 1}),
    doc="1/N sum |D^x/colsum - D^c/colsum|, D = cosine self-distances at `samples` shared "
    "positions (STROTSS content loss, Kolkin et al. 2019)",
)
