"""Independent float64 numpy references for the research loss terms (nstjax.terms.stats,
nstjax.terms.patches), written from the papers' formulas.

Each function scores one image: ``x`` the output's features ``H x W x C``, ``y`` the
reference image's (style or content) features. Random draws (positions, directions)
are inputs, so that a test can pass the ones the JAX term drew from its key. The MMD
references evaluate the kernels explicitly (N x K matrices), never the moment
shortcuts the package uses; W2 takes a nuclear norm (SVD) and scipy's sqrtm, not an
eigendecomposition of the symmetrized product; histogram matching uses
``np.histogram`` and ``np.interp``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

STD_EPS = 1e-8
NORM_EPS = 1e-8


def _rows(f_HxWxC):
    f = np.asarray(f_HxWxC, np.float64)
    return f.reshape(-1, f.shape[-1])


def _pick(rows, idx):
    return rows if idx is None else rows[np.asarray(idx)]


# ------------------------------------------------------------------ moments and kernels


def meanstd(x, y):
    x, y = _rows(x), _rows(y)
    sx = np.sqrt(x.var(axis=0) + STD_EPS)
    sy = np.sqrt(y.var(axis=0) + STD_EPS)
    return np.mean((x.mean(0) - y.mean(0)) ** 2 + (sx - sy) ** 2)


def mmd2(kxx, kxy, kyy):
    """Biased MMD^2 from the three kernel matrices."""
    return kxx.mean() - 2.0 * kxy.mean() + kyy.mean()


def mmd_linear(x, y):
    x, y = _rows(x), _rows(y)
    return mmd2(x @ x.T, x @ y.T, y @ y.T) / x.shape[1]


def mmd_poly(x, y, c=0.0):
    x, y = _rows(x), _rows(y)
    k = lambda a, b: (a @ b.T + c) ** 2
    return mmd2(k(x, x), k(x, y), k(y, y)) / (4.0 * x.shape[1] ** 2)


def gram_gatys(x, y):
    """Gatys et al. eq. 4 with the style Gram rescaled to the output's M positions."""
    x, y = _rows(x), _rows(y)
    n, m = x.shape[1], x.shape[0]
    a = y.T @ y * (m / y.shape[0])
    return np.sum((x.T @ x - a) ** 2) / (4.0 * n * n * m * m)


def _sqd(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def mmd_rbf(x, y, bandwidth=1.0, ix=None, iy=None):
    x, y = _rows(x), _rows(y)
    d2 = _sqd(y, y).mean()  # mean squared distance over all style pairs
    sigma2 = bandwidth**2 * d2
    k = lambda a, b: np.exp(-_sqd(a, b) / (2.0 * sigma2))
    xs, ys = _pick(x, ix), _pick(y, iy)
    return max(mmd2(k(xs, xs), k(xs, ys), k(ys, ys)), 0.0)


def w2(x, y):
    """||mu_x - mu_y||^2 + tr S_x + tr S_y - 2 tr (S_y^1/2 S_x S_y^1/2)^1/2, the last
    trace as the nuclear norm of (x - mu_x) S_y^1/2 / sqrt(M) (scipy's sqrtm; singular
    values stay accurate where eigenvalues near 0 of a singular product do not)."""
    x, y = _rows(x), _rows(y)
    mx, my = x.mean(0), y.mean(0)
    sx = (x - mx).T @ (x - mx) / x.shape[0]
    sy = (y - my).T @ (y - my) / y.shape[0]
    b = (x - mx) @ scipy.linalg.sqrtm(sy).real / np.sqrt(x.shape[0])
    cross = np.linalg.svd(b, compute_uv=False).sum()
    return max(np.sum((mx - my) ** 2) + np.trace(sx) + np.trace(sy) - 2.0 * cross, 0.0)


def w2_sqrtm(x, y):
    """The same with tr sqrtm(S_x S_y) (the classic form; for non-singular S_x)."""
    x, y = _rows(x), _rows(y)
    mx, my = x.mean(0), y.mean(0)
    sx = (x - mx).T @ (x - mx) / x.shape[0]
    sy = (y - my).T @ (y - my) / y.shape[0]
    cross = np.trace(scipy.linalg.sqrtm(sx @ sy)).real
    return np.sum((mx - my) ** 2) + np.trace(sx) + np.trace(sy) - 2.0 * cross


# ------------------------------------------------------------------ 1-D transport


def quantiles(sorted_y, n):
    """The sorted samples' quantile function (linear between plotting positions
    (k + 1/2)/K, constant beyond) at the levels (i + 1/2)/n."""
    k = len(sorted_y)
    return np.interp((np.arange(n) + 0.5) / n, (np.arange(k) + 0.5) / k, sorted_y)


def sliced_w2(x, y, v_CxD, ix=None, iy=None):
    xs, ys = _pick(_rows(x), ix), _pick(_rows(y), iy)
    v = np.asarray(v_CxD, np.float64)
    total = 0.0
    for d in range(v.shape[1]):
        px = np.sort(xs @ v[:, d])
        qy = quantiles(np.sort(ys @ v[:, d]), len(px))
        total += np.mean((px - qy) ** 2)
    return total / v.shape[1]


def hist_remap(x, y, bins=256):
    """Per channel: each output value's position in the output's cumulative histogram
    (``bins`` equal bins over [min, max], linear within a bin), then the style's
    quantile at that position. Returns the remapped features, M x C."""
    x, y = _rows(x), _rows(y)
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        o, s = x[:, c], np.sort(y[:, c])
        lo, hi = o.min(), o.max()
        if hi <= lo:
            u = np.full_like(o, 0.5)
        else:
            counts, edges = np.histogram(o, bins=bins, range=(lo, hi))
            cdf = np.concatenate([[0.0], np.cumsum(counts) / len(o)])
            u = np.interp(o, edges, cdf)  # piecewise-linear CDF through the bin edges
        out[:, c] = np.interp(u, (np.arange(len(s)) + 0.5) / len(s), s)
    return out


def hist(x, y, bins=256, remap=None):
    """Risser et al.'s loss; ``remap`` (M x C) freezes R(O) (for finite differences of
    the stop-gradient objective)."""
    o = _rows(x)
    r = hist_remap(x, y, bins) if remap is None else remap
    return np.mean((o - r) ** 2)


# ------------------------------------------------------------------ patches and point sets


def _unit(v):
    return v / np.sqrt((v**2).sum(-1, keepdims=True) + NORM_EPS)


def patches(f_HxWxC, k):
    """All k x k patches (valid, stride 1), row-major corners, flattened (dy, dx, c)."""
    f = np.asarray(f_HxWxC, np.float64)
    h, w, _ = f.shape
    out = [f[r : r + k, c : c + k].reshape(-1) for r in range(h - k + 1) for c in range(w - k + 1)]
    return np.stack(out)


def mrf(x, y, k=3, ix=None, iy=None):
    px, py = _pick(patches(x, k), ix), _pick(patches(y, k), iy)
    total = 0.0
    for p in px:
        ncc = [np.dot(p, q) / np.sqrt((p @ p + NORM_EPS) * (q @ q + NORM_EPS)) for q in py]
        total += np.sum((p - py[int(np.argmax(ncc))]) ** 2)
    return total / len(px)


def cos_dist(a, b):
    return 1.0 - _unit(a) @ _unit(b).T


def relaxed_emd(x, y, moments=1.0, ix=None, iy=None):
    xr, yr = _rows(x), _rows(y)
    c = cos_dist(_pick(xr, ix), _pick(yr, iy))
    remd = max(c.min(axis=1).mean(), c.min(axis=0).mean())
    mean_d = np.abs(xr.mean(0) - yr.mean(0)).mean()
    cov = lambda a: np.atleast_2d(np.cov(a, rowvar=False, ddof=1))
    cov_d = np.abs(cov(xr) - cov(yr)).mean()
    return remd + moments * (mean_d + cov_d)


def selfsim(x, content, idx=None):
    xs, cs = _pick(_rows(x), idx), _pick(_rows(content), idx)

    def normalized(v):
        d = cos_dist(v, v)
        return d / (d.sum(axis=0, keepdims=True) + NORM_EPS)

    return np.abs(normalized(xs) - normalized(cs)).sum() / len(xs)


# ------------------------------------------------------------------ finite differences


def numeric_grad(f, x, h=1e-6):
    """Central differences of a scalar float64 function, every entry of ``x``."""
    x = np.array(x, np.float64)
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        up = f(x)
        x[i] = old - h
        down = f(x)
        x[i] = old
        g[i] = (up - down) / (2 * h)
    return g
