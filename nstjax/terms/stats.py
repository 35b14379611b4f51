"""Style terms that compare the *distributions* of feature vectors: moments, kernels, 1-D OT.

Registered kinds (every one a style term; ``x`` are the output's feature vectors at one
layer, ``M`` of them, ``y`` the style image's, ``M_s``; ``C`` channels):

* ``meanstd``    per-channel mean and standard deviation (Li et al. 2017, BN statistics);
* ``mmd_linear`` / ``mmd_poly`` / ``mmd_rbf``: maximum mean discrepancy with a linear,
  polynomial or Gaussian kernel (Li et al. 2017); ``mmd_poly`` with ``c=0`` *is*
  Gatys' Gram loss (the normalization below makes the constant 1);
* ``w2``         Wasserstein-2 distance between Gaussians fitted to x and y (mean and
  covariance; Kolkin et al. 2019's moments, crowsonkb's StyleLossW2);
* ``sliced_w2``  sliced Wasserstein-2 along random directions (Heitz et al. 2021);
* (``hist``, per-channel histogram matching, Risser et al. 2017, is in
  :mod:`nstjax.terms.hist`.)

References:

* Y. Li, N. Wang, J. Liu, X. Hou, "Demystifying Neural Style Transfer", IJCAI 2017
  (arXiv 1701.01036).
* E. Heitz, K. Vanhoey, T. Chambon, L. Belcour, "A Sliced Wasserstein Loss for Neural
  Texture Synthesis", CVPR 2021.
* E. Risser, P. Wilmot, C. Barnes, "Stable and Controllable Neural Texture Synthesis and
  Style Transfer Using Histogram Losses", arXiv 1701.08893 (2017).
* N. Kolkin, J. Salavon, G. Shakhnarovich, "Style Transfer by Relaxed Optimal Transport
  and Self-Similarity", CVPR 2019; K. Crowson, style-transfer-pytorch (StyleLossW2).

Conventions. Every loss is per batch element (shape ``(B,)``) and uses biased (1/M)
moments. Losses are means over positions (not sums), so their size does not grow with
the image; style images of any size are compared with outputs of any size. Stochastic
kinds (``mmd_rbf``, ``sliced_w2``) draw their random positions / directions from the
``key`` the engine passes (folded with step, term and layer): same seed, same bytes.
Helpers shared with :mod:`nstjax.terms.patches` (:func:`sample_positions`,
:func:`gather_positions`) live here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from nstjax.terms.common import (  # noqa: F401  (re-exported: patches, hist, tests)
    STD_EPS,
    _linear_blend,
    _mean_cov,
    _sort_key,
    bounds,
    flat,
    gather_positions,
    resample_sorted,
    sample_positions,
    sort_nograd,
)
from nstjax.terms.registry import register


def _meanstd_targets(feat_1xHxWxC, out_shape):
    del out_shape
    y = flat(feat_1xHxWxC)[0]
    return jnp.stack([y.mean(axis=0), jnp.sqrt(y.var(axis=0) + STD_EPS)])


def meanstd_loss(feat_BxHxWxC, target_2xC, key):
    """BN-statistics loss (Li et al. 2017, Sec. 4.2 "BN statistics matching")::

        E = 1/C sum_c [(mu_c(x) - mu_c(y))^2 + (sigma_c(x) - sigma_c(y))^2]

    mu_c, sigma_c: mean and (biased) standard deviation of channel c over the positions,
    ``sigma = sqrt(var + 1e-8)``. Exact; O(M C).
    """
    del key
    x = flat(feat_BxHxWxC)
    mean = x.mean(axis=1)
    std = jnp.sqrt(x.var(axis=1) + STD_EPS)
    sq = jnp.square(mean - target_2xC[0]) + jnp.square(std - target_2xC[1])
    return sq.mean(axis=-1)


def _meanstd_tile_stats(feat_BxHxWxC, target_2xC, weight_HxW):
    del target_2xC
    x, w = feat_BxHxWxC, weight_HxW
    sums = [jnp.einsum("bhwc,hw->bc", x, w), jnp.einsum("bhwc,hw->bc", jnp.square(x), w)]
    return jnp.stack(sums, axis=1)  # B x 2 x C


def _meanstd_tile_loss(sums_Bx2xC, target_2xC, hw):
    """:func:`meanstd_loss` from the sums of x and x^2 over all tiles."""
    mean = sums_Bx2xC[:, 0] / (hw[0] * hw[1])
    var = jnp.maximum(sums_Bx2xC[:, 1] / (hw[0] * hw[1]) - jnp.square(mean), 0.0)
    sq = jnp.square(mean - target_2xC[0]) + jnp.square(jnp.sqrt(var + STD_EPS) - target_2xC[1])
    return sq.mean(axis=-1)


# --------------------------------------------------------------------------- MMD


def _mean_targets(feat_1xHxWxC, out_shape):
    del out_shape
    return flat(feat_1xHxWxC)[0].mean(axis=0)


def mmd_linear_loss(feat_BxHxWxC, target_C, key):
    """MMD with the linear kernel k(x, y) = x^T y (Li et al. 2017, eq. 10)::

        E = MMD^2 / Z = ||mean(x) - mean(y)||^2 / C,   Z = N_l = C

    (the biased estimate E k(x,x') - 2 E k(x,y) + E k(y,y') over all positions).
    Exact; O(M C). Several style images blend as a mixture (weighted means).
    """
    del key
    mean = flat(feat_BxHxWxC).mean(axis=1)
    return jnp.sum(jnp.square(mean - target_C), axis=-1) / feat_BxHxWxC.shape[-1]


def _poly_targets(feat_1xHxWxC, out_shape, c):
    """``(C+1) x C``: the second-moment matrix E[y y^T] (rows 0..C-1) and the mean (row
    C), packed in one array so that several style images blend linearly."""
    del out_shape, c
    y = flat(feat_1xHxWxC)[0]
    m2 = jnp.einsum("mc,md->cd", y, y, preferred_element_type=jnp.float32) / y.shape[0]
    return jnp.concatenate([m2, y.mean(axis=0)[None]], axis=0)


def mmd_poly_loss(feat_BxHxWxC, target, key, c):
    """MMD with the polynomial kernel k(x, y) = (x^T y + c)^2 (Li et al. 2017, eq. 9)::

        MMD^2 = ||E[x x^T] - E[y y^T]||_F^2 + 2 c ||E x - E y||^2
        E     = MMD^2 / (4 C^2)

    (the biased estimate over all positions; the kernel's c^2 cancels). With c = 0 and
    Z = 4 N_l^2 this is exactly Gatys' loss 1/(4 N^2 M^2) ||G - A||^2 with the style
    Gram rescaled to M positions, i.e. ``gram:norm=gatys``: Li et al.'s Sec. 3 identity.
    Computed from second moments (never the M x M_s kernel): O(M C^2), exact.
    """
    del key
    n = feat_BxHxWxC.shape[-1]
    x = flat(feat_BxHxWxC)
    m2 = jnp.einsum("bmc,bmd->bcd", x, x, preferred_element_type=jnp.float32) / x.shape[1]
    sq = jnp.sum(jnp.square(m2 - target[:n]), axis=(1, 2))
    if c:
        sq = sq + 2.0 * c * jnp.sum(jnp.square(x.mean(axis=1) - target[n]), axis=-1)
    return sq / (4.0 * n * n)


def _rbf_targets(feat_1xHxWxC, out_shape, bandwidth, samples):
    """The style's feature vectors (sampled per step by the loss) and their mean
    squared pairwise distance ``D = mean_{i,j} ||y_i - y_j||^2 = 2 tr Cov(y)`` (all
    pairs, exact)."""
    del out_shape, bandwidth, samples
    y = flat(feat_1xHxWxC)[0]
    return {"y": y, "d2": 2.0 * jnp.sum(y.var(axis=0))}


def _sq_dists(a_NxC, b_KxC):
    """||a_i - b_j||^2 as N x K (clamped at 0 against rounding)."""
    ab = jnp.einsum("nc,kc->nk", a_NxC, b_KxC, preferred_element_type=jnp.float32)
    aa = jnp.sum(jnp.square(a_NxC), axis=-1)
    bb = jnp.sum(jnp.square(b_KxC), axis=-1)
    return jnp.maximum(aa[:, None] + bb[None, :] - 2.0 * ab, 0.0)


def rbf_draw(key, m: int, m_s: int, samples: int):
    """The output and style positions ``mmd_rbf`` uses for ``key`` (None: all)."""
    kx, ky = jax.random.split(key)
    return sample_positions(kx, m, samples), sample_positions(ky, m_s, samples)


def mmd_rbf_loss(feat_BxHxWxC, target, key, bandwidth, samples):
    """MMD with the Gaussian kernel (Li et al. 2017, eq. 11)::

        k(x, y) = exp(-||x - y||^2 / (2 sigma^2)),  sigma^2 = bandwidth^2 * D
        E = MMD^2 = mean_{i,i'} k(x_i, x_i') - 2 mean_{i,j} k(x_i, y_j)
                    + mean_{j,j'} k(y_j, y_j')                (Z = 1)

    D is the mean squared distance between the style's feature vectors (Li et al. set
    sigma^2 to the mean squared distance of the pairs), so ``bandwidth`` is relative
    and the same value suits every layer. The biased (V-statistic) estimate: >= 0.

    Memory and cost: the kernels are N x K matrices. ``samples`` bounds both sides: each
    step draws that many distinct output positions and style positions from ``key``
    (all positions where a layer has fewer), so a step costs O(samples^2 C) time and
    O(samples^2) memory whatever the image size; positions not drawn get no gradient
    that step (an unbiased choice of which, a biased but consistent MMD^2 estimate).
    """
    x = flat(feat_BxHxWxC)
    y = target["y"]
    ix, iy = rbf_draw(key, x.shape[1], y.shape[0], samples)
    xs = gather_positions(x, ix)
    ys = y if iy is None else jnp.take(y, iy, axis=0)
    scale = -0.5 / (bandwidth * bandwidth * jnp.maximum(target["d2"], 1e-30))
    kyy = jnp.mean(jnp.exp(scale * _sq_dists(ys, ys)))

    def one(xi):
        kxx = jnp.mean(jnp.exp(scale * _sq_dists(xi, xi)))
        kxy = jnp.mean(jnp.exp(scale * _sq_dists(xi, ys)))
        return kxx - 2.0 * kxy + kyy

    return jnp.maximum(jax.vmap(one)(xs), 0.0)


# --------------------------------------------------------------------------- w2


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def trace_sqrt_psd(a: jax.Array, eps: float) -> jax.Array:
    """``tr sqrt(A)`` for a symmetric positive semi-definite ``A``: the sum of the square
    roots of its eigenvalues (negative rounding noise clamped to 0).

    Gradient ``1/2 V diag(1 / sqrt(max(lambda, floor))) V^T`` (= 1/2 A^{-1/2}), with the
    eigenvalues clamped at ``floor = eps * max(lambda)`` so that it stays finite for a
    singular A (its null space gets the clamped value, which the chain rule through
    A = B^T B multiplies by ~0)."""
    w = jnp.linalg.eigvalsh(a)
    return jnp.sum(jnp.sqrt(jnp.maximum(w, 0.0)))


def _tsp_fwd(a, eps):
    w, v = jnp.linalg.eigh(a)
    return jnp.sum(jnp.sqrt(jnp.maximum(w, 0.0))), (w, v)


def _tsp_bwd(eps, res, g):
    w, v = res
    floor = eps * jnp.maximum(jnp.max(w), 0.0) + 1e-30
    d = 0.5 / jnp.sqrt(jnp.maximum(w, floor))
    return (jnp.einsum("ik,k,jk->ij", v, g * d, v),)


trace_sqrt_psd.defvjp(_tsp_fwd, _tsp_bwd)


def _psd_sqrt(a):
    w, v = jnp.linalg.eigh(a)
    return jnp.einsum("ik,k,jk->ij", v, jnp.sqrt(jnp.maximum(w, 0.0)), v)


def _w2_targets(feat_1xHxWxC, out_shape, eps):
    """The style's mean, sqrt(Cov) (eigh, eigenvalues clamped at 0) and tr Cov."""
    del out_shape, eps
    mean, cov = _mean_cov(flat(feat_1xHxWxC)[0])
    return {"mean": mean, "sqrt_cov": _psd_sqrt(cov), "trace": jnp.trace(cov)}


def w2_loss(feat_BxHxWxC, target, key, eps):
    """Squared Wasserstein-2 distance between Gaussians fitted to x and y::

        E = ||mu_x - mu_y||^2 + tr S_x + tr S_y - 2 tr (S_y^1/2 S_x S_y^1/2)^1/2

    (Dowson & Landau 1982; Kolkin et al. 2019 match these moments; Crowson's
    StyleLossW2). mu, S: mean and biased covariance over the positions. S_y^1/2 is
    computed once per run (targets); each step takes the trace of a square root of
    ``A = S_y^1/2 S_x S_y^1/2 = B^T B`` with ``B = (x - mu_x) S_y^1/2 / sqrt(M)``, from
    one symmetric eigendecomposition of the smaller of B^T B (C x C) and B B^T (M x M,
    when a layer has fewer positions than channels: same non-zero eigenvalues), with
    the gradient of :func:`trace_sqrt_psd` (eigenvalues clamped at ``eps * max``).
    Exact; O(M C min(M, C) + min(M, C)^3): about a Gram's cost plus an eigh of at most
    C x C per layer (~40 ms at 512 on a 2-core CPU). On CPU that eigh is LAPACK's
    (OpenBLAS, through jaxlib): run with ``OPENBLAS_NUM_THREADS=1``, or OpenBLAS's
    threads contend with XLA's and a step can stall for seconds
    (benchmarks/terms_speed.py).
    """
    del key
    x = flat(feat_BxHxWxC)
    m, c = x.shape[1], x.shape[2]

    def one(xi):
        mean = xi.mean(axis=0)
        xc = xi - mean
        r = target["sqrt_cov"]
        if m < c:  # B B^T, M x M, B = (x - mu_x) S_y^1/2 / sqrt(M)
            b = jnp.einsum("mc,cd->md", xc, r, preferred_element_type=jnp.float32)
            a = jnp.einsum("mc,nc->mn", b, b, preferred_element_type=jnp.float32) / m
        else:  # B^T B = S_y^1/2 S_x S_y^1/2, C x C (one M C^2 product: S_x)
            cov = jnp.einsum("mc,md->cd", xc, xc, preferred_element_type=jnp.float32) / m
            a = r @ cov @ r
        cross = trace_sqrt_psd(a, eps)
        trace_x = jnp.sum(jnp.square(xc)) / m
        mean_sq = jnp.sum(jnp.square(mean - target["mean"]))
        return mean_sq + trace_x + target["trace"] - 2.0 * cross

    return jnp.maximum(jax.vmap(one)(x), 0.0)


# --------------------------------------------------------------------------- sliced_w2


def _features_targets(feat_1xHxWxC, out_shape, **options):
    """The style's feature vectors ``M_s x C`` (the loss samples / projects them)."""
    del out_shape, options
    return flat(feat_1xHxWxC)[0]


def sliced_draw(key, c: int, m: int, m_s: int, directions: int, samples: int):
    """``sliced_w2``'s random draws for ``key``: unit directions ``C x D`` and the
    output / style positions (None: all)."""
    kd, kx, ky = jax.random.split(key, 3)
    v = jax.random.normal(kd, (c, directions), jnp.float32)
    v = v / jnp.linalg.norm(v, axis=0, keepdims=True)
    return v, sample_positions(kx, m, samples), sample_positions(ky, m_s, samples)


def sliced_w2_loss(feat_BxHxWxC, y_MsxC, key, directions, samples):
    """Sliced Wasserstein-2 loss (Heitz et al. 2021, eq. 6-8)::

        E = 1/D sum_d 1/N sum_i (sort(x . v_d)_i - sort(y . v_d)_i)^2

    over ``directions`` = D random unit directions v_d drawn afresh every step from
    ``key`` (as the paper does): each term is the 1-D optimal transport cost between
    the projected distributions. With different numbers of positions the sorted style
    projections are resampled to the output's count N (linear interpolation of the
    empirical quantile function, :func:`resample_sorted`).

    Memory and cost: sorting dominates (XLA:CPU sorts ~4-5 M floats per second per
    core), so each step also draws ``samples`` output and style positions (all where a
    layer has fewer): O(D samples log samples) per layer, whatever the image size; the
    positions not drawn get no gradient that step. The gradient is the paper's:
    2 (x.v_d - matched quantile) / (D N) per drawn position and direction.
    """
    x = flat(feat_BxHxWxC)
    c = x.shape[-1]
    v, ix, iy = sliced_draw(key, c, x.shape[1], y_MsxC.shape[0], directions, samples)
    xs = gather_positions(x, ix)
    ys = y_MsxC if iy is None else jnp.take(y_MsxC, iy, axis=0)
    py = jnp.einsum("mc,cd->dm", ys, v, preferred_element_type=jnp.float32)
    qy = resample_sorted(sort_nograd(py), xs.shape[1])  # D x N
    px = jnp.einsum("bmc,cd->bdm", xs, v, preferred_element_type=jnp.float32)
    return jnp.mean(jnp.square(jnp.sort(px, axis=-1) - qy), axis=(1, 2))


# --------------------------------------------------------------------------- hist


register(
    "meanstd",
    role="style",
    targets=_meanstd_targets,
    loss=meanstd_loss,
    tile_stats=_meanstd_tile_stats,
    tile_loss=_meanstd_tile_loss,
    doc="1/C sum_c (mu_c - mu_c^s)^2 + (sigma_c - sigma_c^s)^2: BN statistics "
    "(Li et al. 2017, IJCAI)",
)
register(
    "mmd_linear",
    role="style",
    targets=_mean_targets,
    loss=mmd_linear_loss,
    blend=_linear_blend,
    doc="MMD^2 / C, linear kernel x.y: ||mean x - mean y||^2 / C (Li et al. 2017)",
)
register(
    "mmd_poly",
    role="style",
    targets=_poly_targets,
    loss=mmd_poly_loss,
    blend=_linear_blend,
    options={"c": 0.0},
    check=bounds(at_least={"c": 0.0}),
    doc="MMD^2 / (4 C^2), kernel (x.y + c)^2; c=0 is gram:norm=gatys exactly (Li et al. 2017)",
)
register(
    "mmd_rbf",
    role="style",
    targets=_rbf_targets,
    loss=mmd_rbf_loss,
    options={"bandwidth": 1.0, "samples": 1024},
    stochastic=True,
    check=bounds(at_least={"samples": 1}, above={"bandwidth": 0.0}),
    doc="MMD^2, Gaussian kernel, sigma^2 = bandwidth^2 * mean sq. distance of style vectors; "
    "`samples` positions per side per step (Li et al. 2017)",
)
register(
    "w2",
    role="style",
    targets=_w2_targets,
    loss=w2_loss,
    options={"eps": 1e-6},
    check=bounds(above={"eps": 0.0}),
    doc="W2^2 between Gaussians (mean, covariance): ||dmu||^2 + tr S + tr S_s "
    "- 2 tr (S_s^1/2 S S_s^1/2)^1/2 (Kolkin et al. 2019; Crowson's StyleLossW2)",
)
register(
    "sliced_w2",
    role="style",
    targets=_features_targets,
    loss=sliced_w2_loss,
    options={"directions": 32, "samples": 4096},
    stochastic=True,
    check=bounds(at_least={"directions": 1, "samples": 1}),
    doc="sliced W2: mean over random unit directions of the 1-D W2^2 of sorted projections "
    "(Heitz et al. 2021, CVPR)",
)
