"""Helpers shared by the research terms (:mod:`nstjax.terms.stats`,
:mod:`nstjax.terms.patches`, :mod:`nstjax.terms.hist`): flattening features, sampling
positions from the step's key, sorting without gradients, resampling sorted values, and
option bounds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from nstjax.errors import UsageError

STD_EPS = 1e-8
"""``sigma = sqrt(var + STD_EPS)``: keeps d sigma / d x finite for a constant channel."""


# --------------------------------------------------------------------------- helpers


def flat(feat_BxHxWxC: jax.Array) -> jax.Array:
    """``BxHxWxC`` -> ``BxMxC`` (M = H*W positions)."""
    b, h, w, c = feat_BxHxWxC.shape
    return feat_BxHxWxC.reshape(b, h * w, c)


def sample_positions(key: jax.Array, n: int, samples: int) -> jax.Array | None:
    """Indices of ``samples`` distinct positions out of ``n``, uniformly at random from
    ``key``, in random order; None when ``n <= samples``: use all positions (then the
    term is deterministic). ``n`` and ``samples`` are static.

    The positions of the ``samples`` largest of ``n`` random 32-bit keys: the same law as
    a prefix of ``jax.random.permutation(key, n)`` (up to ties among the keys), from one
    top-k. The permutation shuffles by rounds of sorting in a loop; those loops were 44 of
    the 49 in the distance panel's program (with the copies and tuples around them), and
    the panel at 256 px compiled in 9.5 s with 1,233 kernels, against 8.7 s and 837."""
    if n <= samples:
        return None
    return lax.top_k(jax.random.bits(key, (n,), jnp.uint32), samples)[1]


def gather_positions(x_BxMxC: jax.Array, idx: jax.Array | None) -> jax.Array:
    """The rows ``idx`` of every batch element (all rows when ``idx`` is None)."""
    return x_BxMxC if idx is None else jnp.take(x_BxMxC, idx, axis=1)


def _sort_key(x: jax.Array) -> jax.Array:
    """float32 -> int32 with the same order (and back: the map is an involution)."""
    i = lax.bitcast_convert_type(x, jnp.int32)
    return i ^ ((i >> 31) & jnp.int32(0x7FFFFFFF))


def sort_nograd(x: jax.Array) -> jax.Array:
    """``sort(x, axis=-1)`` for values that need no gradient (targets, style side).

    Sorts the order-preserving int32 image of the floats: on XLA:CPU an int32 sort is
    ~5x faster than a float32 one (which orders NaNs and signed zeros totally)."""
    k = lax.sort(_sort_key(lax.stop_gradient(x)), dimension=x.ndim - 1)
    return lax.bitcast_convert_type(_sort_key(lax.bitcast_convert_type(k, jnp.float32)),
                                    jnp.float32)  # fmt: skip


def resample_sorted(sorted_yxN: jax.Array, m: int) -> jax.Array:
    """Empirical quantiles of sorted samples (last axis, ``N`` of them) at ``m`` levels.

    The quantile function interpolates linearly between the plotting positions
    ``(k + 1/2) / N`` and is evaluated at ``(i + 1/2) / m``, i = 0..m-1 (clamped at the
    ends); for ``m == N`` it returns the samples themselves.
    """
    n = sorted_yxN.shape[-1]
    if n == m:
        return sorted_yxN
    t = jnp.clip((jnp.arange(m, dtype=jnp.float32) + 0.5) * (n / m) - 0.5, 0.0, n - 1.0)
    i0 = jnp.floor(t).astype(jnp.int32)
    i1 = jnp.minimum(i0 + 1, n - 1)
    w = t - i0
    return sorted_yxN[..., i0] * (1.0 - w) + sorted_yxN[..., i1] * w


def _mean_cov(x_MxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and biased covariance (1/M) of the rows, centered first (two passes)."""
    mean = x_MxC.mean(axis=0)
    xc = x_MxC - mean
    return mean, jnp.einsum("mc,md->cd", xc, xc, preferred_element_type=jnp.float32) / (
        x_MxC.shape[0]
    )


def _linear_blend(targets, weights):
    """Several style images as one *mixture* distribution: its expectations (means,
    second moments) are the weighted sums of the images' own."""
    total = None
    for t, w in zip(targets, weights, strict=True):
        total = t * w if total is None else total + t * w
    return total


def bounds(at_least: dict | None = None, above: dict | None = None):
    """A ``check`` function: option ``name`` must be >= ``at_least[name]`` / >
    ``above[name]``."""

    def check(**options):
        for name, low in (at_least or {}).items():
            if not options[name] >= low:
                raise UsageError(f"option {name} must be >= {low}, got {options[name]}")
        for name, low in (above or {}).items():
            if not options[name] > low:
                raise UsageError(f"option {name} must be > {low}, got {options[name]}")

    return check


# --------------------------------------------------------------------------- meanstd
