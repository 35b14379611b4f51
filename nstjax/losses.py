"""Loss terms of neural style transfer, as pure functions, with explicit registries.

Notation (Gatys et al. 2016): a layer has N_l channels and M_l = H*W positions;
``F`` is its N_l x M_l response, ``G = F F^T`` its Gram matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from nstjax.errors import UsageError


@jax.custom_vjp
def gram(feat_BxHxWxC: jax.Array) -> jax.Array:
    """Unnormalized Gram matrices ``gram_BxCxC`` (sum over positions).

    Its gradient is the one Gatys et al. (2016) derive for eq. 6: for ``G = F^T F``
    (positions x channels here), ``dF = F (dG + dG^T)``, one matrix product in the
    features' own layout. Autodiff of the einsum took two products, each written
    channels-first, and a transposing pass to add them into the layer's gradient: the
    256x192 L-BFGS step ran 6-8% slower. ``tests/test_objective.py`` checks it against
    float64 central differences.
    """
    return _gram(feat_BxHxWxC)


def _gram(feat_BxHxWxC: jax.Array) -> jax.Array:
    b, h, w, c = feat_BxHxWxC.shape
    f_BxMxC = feat_BxHxWxC.reshape(b, h * w, c)
    return jnp.einsum("bmc,bmd->bcd", f_BxMxC, f_BxMxC, preferred_element_type=jnp.float32)


def _gram_fwd(feat_BxHxWxC):
    return _gram(feat_BxHxWxC), feat_BxHxWxC


def _gram_bwd(feat_BxHxWxC, dgram_BxCxC):
    b, h, w, c = feat_BxHxWxC.shape
    sym_BxCxC = dgram_BxCxC + jnp.swapaxes(dgram_BxCxC, 1, 2)
    f_BxMxC = feat_BxHxWxC.reshape(b, h * w, c)
    df_BxMxC = jnp.einsum("bmc,bcd->bmd", f_BxMxC, sym_BxCxC.astype(f_BxMxC.dtype),
                          preferred_element_type=jnp.float32)  # fmt: skip
    return (df_BxMxC.reshape(feat_BxHxWxC.shape).astype(feat_BxHxWxC.dtype),)


gram.defvjp(_gram_fwd, _gram_bwd)


# Gram normalizations: each maps (squared error of *unnormalized* Grams, N, M) to
# the layer's style loss. They differ only by a per-layer constant factor, which
# changes how layers are weighted against each other and against the content loss.
def _norm_gatys(sq, n, m):
    """E_l = 1/(4 N^2 M^2) sum (G - A)^2  (Gatys et al. 2016, eq. 4)."""
    return sq / (4.0 * n * n * m * m)


def _norm_n(sq, n, m):
    """Grams divided by N: sum (G/N - A/N)^2."""
    del m
    return sq / (n * n)


def _norm_hw(sq, n, m):
    """Grams divided by M = H*W (pastiche, many PyTorch ports): sum (G/M - A/M)^2."""
    del n
    return sq / (m * m)


def _norm_chw(sq, n, m):
    """Grams divided by N*M (Johnson et al. 2016): sum (G/NM - A/NM)^2."""
    return sq / (n * n * m * m)


GRAM_NORMS: dict[str, Callable] = {
    "gatys": _norm_gatys,
    "n": _norm_n,
    "hw": _norm_hw,
    "chw": _norm_chw,
}


def check_gram_norm(name: str) -> str:
    if name not in GRAM_NORMS:
        raise UsageError(f"unknown gram normalization {name!r}; use one of {sorted(GRAM_NORMS)}")
    return name


def style_layer_loss(
    feat_BxHxWxC: jax.Array, target_gram_BxCxC: jax.Array, norm: str = "gatys"
) -> jax.Array:
    """Style loss of one layer, per batch element (shape B)."""
    _, h, w, c = feat_BxHxWxC.shape
    diff = gram(feat_BxHxWxC) - target_gram_BxCxC
    sq_B = jnp.sum(jnp.square(diff), axis=(1, 2))
    return GRAM_NORMS[norm](sq_B, float(c), float(h * w))


def content_layer_loss(feat_BxHxWxC: jax.Array, target_BxHxWxC: jax.Array) -> jax.Array:
    """L_content = 1/2 sum (F - P)^2  (Gatys et al. 2016, eq. 1), per batch element."""
    return 0.5 * jnp.sum(jnp.square(feat_BxHxWxC - target_BxHxWxC), axis=(1, 2, 3))


def tv_loss(image_BxHxWx3: jax.Array) -> jax.Array:
    """Total variation: sum of squared differences of neighbouring pixels, per batch element.

    Computed in pixel units ([0, 255]) so its weight does not depend on the weights source.
    """
    dy = image_BxHxWx3[:, 1:, :, :] - image_BxHxWx3[:, :-1, :, :]
    dx = image_BxHxWx3[:, :, 1:, :] - image_BxHxWx3[:, :, :-1, :]
    return jnp.sum(jnp.square(dy), axis=(1, 2, 3)) + jnp.sum(jnp.square(dx), axis=(1, 2, 3))
