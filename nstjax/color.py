"""Colour control: luminance-only transfer and colour histogram matching.

Gatys, Ecker, Bethge, Hertzmann & Shechtman, "Controlling Perceptual Factors in Neural
Style Transfer" (CVPR 2017, arXiv 1611.07865), Section 5 "Colour control" (first described
in Gatys, Bethge, Hertzmann & Shechtman, "Preserving Color in Neural Artistic Style
Transfer", arXiv 1606.05897). Two ways to keep the content image's colours:

* **Luminance-only transfer** (``mode="luminance"``): style transfer runs on luminance
  alone. Content and style are converted to YIQ (:func:`rgb_to_yiq`); the style's luminance
  is first matched to the content's mean and standard deviation (paper eq. 7,
  :func:`match_luminance`); the network sees the luminance channels
  (:func:`luminance_inputs`); the output's luminance is then combined with the content's
  I and Q channels and converted back to RGB (:func:`recombine`).
* **Colour histogram matching** (``mode="histogram"``): before the transfer, the style
  image's colours are transformed linearly so that their mean and covariance equal the
  content's (:func:`match_histogram`), ``x' = A (x - mu_s) + mu_c`` with
  ``A Sigma_s A^T = Sigma_c``; the square root ``A`` is chosen by ``transfer``.

All functions are pure numpy and run once per run on the host (not under ``jit``): they take
and return float32 pixel-space arrays (HxWx3 RGB, or HxWx1 luminance, in [0, 255] units)
and compute in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nstjax.errors import UsageError

MODES = ("none", "luminance", "histogram")
"""Colour modes: ``none`` (plain transfer), ``luminance`` (luminance-only transfer),
``histogram`` (colour histogram matching of the style image)."""

TRANSFERS = ("cholesky", "sym", "pca")
"""Square roots ``A`` of the linear colour transfer (:func:`match_histogram`)."""

# NTSC (FCC 1953) RGB -> YIQ. Y is in the units of RGB (a grey pixel (v, v, v) has Y = v and
# I = Q = 0: the I and Q rows sum to zero). The inverse is computed, not rounded, so that
# yiq_to_rgb(rgb_to_yiq(x)) == x up to float64 rounding.
RGB_TO_YIQ = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ],
    dtype=np.float64,
)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)

EPS_REL = 1e-5
"""Covariance regulariser of :func:`match_histogram`: ``eps = EPS_REL * trace(Sigma) / 3``
(at least :data:`EPS_ABS`) is added to each covariance's diagonal."""
EPS_ABS = 1e-6


def check(mode: str, transfer: str = "cholesky") -> None:
    """Raises :class:`~nstjax.errors.UsageError` (one line) unless ``mode`` is one of
    :data:`MODES` and ``transfer`` one of :data:`TRANSFERS`."""
    if mode not in MODES:
        raise UsageError(f"unknown colour mode {mode!r} (choose from {', '.join(MODES)})")
    if transfer not in TRANSFERS:
        raise UsageError(
            f"unknown colour transfer {transfer!r} (choose from {', '.join(TRANSFERS)})"
        )


def _rgb(img: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{what} must be an HxWx3 array, got shape {a.shape}")
    return a


def _lum(y: np.ndarray, what: str) -> np.ndarray:
    """An HxW or HxWx1 luminance as float64 HxWx1."""
    a = np.asarray(y, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] != 1:
        raise ValueError(f"{what} must be an HxWx1 (or HxW) array, got shape {a.shape}")
    return a


def rgb_to_yiq(img: np.ndarray) -> np.ndarray:
    """RGB -> NTSC YIQ, per pixel: ``[Y, I, Q] = M [R, G, B]`` with

    ``Y = 0.299 R + 0.587 G + 0.114 B``,
    ``I = 0.595716 R - 0.274453 G - 0.321263 B``,
    ``Q = 0.211456 R - 0.522591 G + 0.311135 B``

    (the colour space of Gatys et al. 2017, Section 5). Y has the units of RGB (0..255 for
    pixel-space input); I and Q are zero for grey. Returns float32 HxWx3.
    """
    return (_rgb(img, "img") @ RGB_TO_YIQ.T).astype(np.float32)


def yiq_to_rgb(yiq: np.ndarray) -> np.ndarray:
    """NTSC YIQ -> RGB with ``M^-1``, the exact (computed) inverse of :func:`rgb_to_yiq`'s
    matrix. Not clipped. Returns float32 HxWx3."""
    return (_rgb(yiq, "yiq") @ YIQ_TO_RGB.T).astype(np.float32)


def match_luminance(style_Y: np.ndarray, content_Y: np.ndarray) -> np.ndarray:
    """The style luminance linearly matched to the content luminance (Gatys et al. 2017,
    Section 5, eq. 7): ``L_s' = sigma_c / sigma_s * (L_s - mu_s) + mu_c``, with ``mu`` and
    ``sigma`` each image's mean and (population) standard deviation over all pixels.

    So the style's luminance has the content's mean and standard deviation, compensating
    for the difference in luminance histograms before luminance-only transfer. The result
    is not clipped (clipping would change its statistics), so it may leave [0, 255]. A
    constant style luminance (``sigma_s = 0``) becomes the constant ``mu_c``.

    Args:
      style_Y: the style image's luminance, HxW or HxWx1.
      content_Y: the content image's luminance, any HxW or HxWx1 (sizes may differ).

    Returns:
      float32 in ``style_Y``'s shape.
    """
    shape = np.shape(style_Y)
    ls = _lum(style_Y, "style_Y")
    lc = _lum(content_Y, "content_Y")
    mu_s, sigma_s = ls.mean(), ls.std()
    mu_c, sigma_c = lc.mean(), lc.std()
    if sigma_s > 0:
        out = sigma_c / sigma_s * (ls - mu_s) + mu_c
    else:
        out = np.full_like(ls, mu_c)
    return out.reshape(shape).astype(np.float32)


def luminance_inputs(
    content_rgb: np.ndarray, style_rgbs: Sequence[np.ndarray] | np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The inputs of luminance-only transfer (Gatys et al. 2017, Section 5): the content's
    luminance ``Y_c`` and each style's luminance matched to it by :func:`match_luminance`
    (eq. 7).

    Args:
      content_rgb: float HxWx3 in [0, 255].
      style_rgbs: a sequence of float HxWx3 style images (one HxWx3 array is taken as a
        sequence of one).

    Returns:
      ``(content_Y, [style_Y', ...])``: float32 HxWx1 each (style sizes kept).
    """
    if isinstance(style_rgbs, np.ndarray) and style_rgbs.ndim == 3:
        style_rgbs = [style_rgbs]
    content_Y = rgb_to_yiq(content_rgb)[..., :1]
    styles = [match_luminance(rgb_to_yiq(s)[..., :1], content_Y) for s in style_rgbs]
    return content_Y, styles


def recombine(output_Y: np.ndarray, content_rgb: np.ndarray) -> np.ndarray:
    """The final image of luminance-only transfer (Gatys et al. 2017, Section 5): the
    output's luminance ``Y_o`` combined with the content's chrominance ``I_c, Q_c``,
    ``rgb = clip(M^-1 [Y_o, I_c, Q_c], 0, 255)``.

    Y's column of ``M^-1`` is (1, 1, 1) (the I and Q rows of ``M`` sum to zero), so where
    nothing is clipped the result is the content shifted by ``Y_o - Y_c`` equally in R, G
    and B: its I and Q equal the content's exactly (up to float rounding), and for an
    integer-valued content image they survive rounding to 8 bits too (except near .5
    ties, where float rounding can tip one channel; in general 8-bit rounding moves I or Q
    by at most half the L1 norm of its row, 0.60 and 0.52). Clipping a channel at 0 or 255
    changes I and Q at that pixel.

    Args:
      output_Y: the stylised luminance, HxWx1 (or HxW), the content's height and width.
      content_rgb: float HxWx3 in [0, 255].

    Returns:
      float32 HxWx3 in [0, 255].
    """
    y = _lum(output_Y, "output_Y")
    c = _rgb(content_rgb, "content_rgb")
    if y.shape[:2] != c.shape[:2]:
        raise ValueError(
            f"output_Y is {y.shape[0]}x{y.shape[1]} but the content is {c.shape[0]}x{c.shape[1]}"
        )
    yiq = np.concatenate([y, c @ RGB_TO_YIQ[1:].T], axis=-1)
    return np.clip(yiq @ YIQ_TO_RGB.T, 0.0, 255.0).astype(np.float32)


def _stats(pixels_Nx3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and regularised (population) covariance: ``Sigma + eps I`` with
    ``eps = max(EPS_REL * trace(Sigma) / 3, EPS_ABS)``."""
    mu = pixels_Nx3.mean(axis=0)
    d = pixels_Nx3 - mu
    cov = d.T @ d / len(pixels_Nx3)
    eps = max(EPS_REL * np.trace(cov) / 3.0, EPS_ABS)
    return mu, cov + eps * np.eye(3)


def _eig_desc(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, floored at 0) and eigenvectors (columns) of a symmetric
    matrix, each eigenvector's sign fixed so that its largest-magnitude entry is positive."""
    w, q = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    w, q = np.maximum(w[order], 0.0), q[:, order]
    idx = np.argmax(np.abs(q), axis=0)
    signs = np.sign(q[idx, np.arange(3)])
    signs[signs == 0] = 1.0
    return w, q * signs


def _transfer_matrix(cov_s: np.ndarray, cov_c: np.ndarray, transfer: str) -> np.ndarray:
    """``A`` with ``A cov_s A^T = cov_c`` (both symmetric positive definite)."""
    if transfer == "cholesky":
        # A = L_c L_s^-1  <=>  L_s^T A^T = L_c^T.
        l_s = np.linalg.cholesky(cov_s)
        l_c = np.linalg.cholesky(cov_c)
        return np.linalg.solve(l_s.T, l_c.T).T
    w_s, q_s = _eig_desc(cov_s)
    w_c, q_c = _eig_desc(cov_c)
    if transfer == "sym":
        sqrt_c = (q_c * np.sqrt(w_c)) @ q_c.T
        inv_sqrt_s = (q_s / np.sqrt(w_s)) @ q_s.T
        return sqrt_c @ inv_sqrt_s
    # pca
    return (q_c * (np.sqrt(w_c) / np.sqrt(w_s))) @ q_s.T


def match_histogram(
    style_rgb: np.ndarray,
    content_rgb: np.ndarray,
    mode: str = "cholesky",
    clip: bool = False,
) -> np.ndarray:
    """The style image recoloured to the content's colour statistics: colour histogram
    matching (Gatys et al. 2017, Section 5; Gatys et al. 2016, arXiv 1606.05897, Section 2).

    Each style pixel ``x`` (an RGB 3-vector) becomes ``x' = A (x - mu_s) + mu_c``, with
    ``mu`` the images' mean colours and ``A`` any matrix with ``A Sigma_s A^T = Sigma_c``
    (``Sigma`` the 3x3 colour covariances), so that the recoloured style has the content's
    mean and covariance. ``mode`` picks the square root:

    * ``"cholesky"``: ``A = L_c L_s^-1``, with ``Sigma = L L^T`` the Cholesky factors;
    * ``"sym"``: ``A = Sigma_c^(1/2) Sigma_s^(-1/2)``, the symmetric matrix square roots
      (the 3D colour matching of Hertzmann et al.'s "Image Analogies", the variant the
      colour-preservation note uses);
    * ``"pca"``: ``A = Q_c Lambda_c^(1/2) Lambda_s^(-1/2) Q_s^T`` with
      ``Sigma = Q Lambda Q^T`` the eigendecompositions, eigenvalues sorted in descending
      order in both and each eigenvector's sign fixed so that its largest-magnitude entry
      is positive (so the principal axes are paired consistently).

    Numerical safety: ``eps I`` with ``eps = max(1e-5 * trace(Sigma) / 3, 1e-6)`` is added
    to both covariances before ``A`` is computed, so uniform or degenerate images (a
    constant colour, a greyscale image) give a finite ``A``. The recoloured covariance is
    then ``Sigma_c + eps_c I - eps_s A A^T`` rather than ``Sigma_c``: a relative error of
    order ``eps_s / lambda_min(Sigma_s)`` along the style's weakest colour axis (for the
    paper's Fig. 3 content and style at 128 px: 3e-4 of ``Sigma_c`` in Frobenius norm).
    The mean is matched exactly.

    Args:
      style_rgb: float HxWx3 in [0, 255].
      content_rgb: float HxWx3 in [0, 255] (any size).
      mode: ``"cholesky"``, ``"sym"`` or ``"pca"`` (:data:`TRANSFERS`).
      clip: clip the result to [0, 255]. Off by default: the matched colours may leave the
        range, and clipping them changes the statistics just matched.

    Returns:
      float32 in ``style_rgb``'s shape.
    """
    check("histogram", mode)
    s = _rgb(style_rgb, "style_rgb")
    c = _rgb(content_rgb, "content_rgb")
    xs = s.reshape(-1, 3)
    mu_s, cov_s = _stats(xs)
    mu_c, cov_c = _stats(c.reshape(-1, 3))
    a = _transfer_matrix(cov_s, cov_c, mode)
    out = (xs - mu_s) @ a.T + mu_c
    if clip:
        out = np.clip(out, 0.0, 255.0)
    return out.reshape(s.shape).astype(np.float32)
