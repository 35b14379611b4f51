"""Arbitrary style transfer as pure, jittable functions of a params pytree.

Images are float32 NHWC batches with values in [0, 1] (RGB, not mean-subtracted);
results are in [0, 1] too. ``params`` is what
:func:`nstjax.arbitrary.onnx_import.load_params` returns: ``{"predict": ...,
"transform": ...}`` and, when imported with ``fake_quant=True``, ``"quant"``,
in which case both networks emulate the int8 activations of the original
graphs (closer to onnxruntime, slower; the float path is the default).

Preprocessing is explicit:

* style images (and, for ``strength < 1``, the content images) are
  centre-cropped to a square and resized to ``style_size`` = 256 by
  :func:`prepare_style` before the style predictor, as the original model
  was run; pass ``style_size=None`` to feed them unchanged.
* content images are used at their own size (the original ran at 384 on the
  longer side; resize beforehand for that look). :func:`transfer` reflect-pads
  height and width up to a multiple of 4 and crops the result back, so the
  output has the content's size.

Typical use: ``jax.jit(stylize)(params, contents_Bx384x384x3, styles_Sx256x256x3)``;
one call handles the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from nstjax.errors import UsageError

STYLE_SIZE = 256
"""Side of the square the style predictor was run at."""

MIN_SIDE = 8
"""Smallest content height or width the transformer accepts."""


def _variables(params: Mapping, network: str) -> dict:
    variables = {"params": params[network]}
    if "quant" in params:
        variables["quant"] = params["quant"][network]
    return variables


def _batch(images: jax.Array, what: str) -> jax.Array:
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UsageError(f"{what} must be a (batch, height, width, 3) array, got {images.shape}")
    return images


def prepare_style(images_BxHxWx3: jax.Array, size: int | None = STYLE_SIZE) -> jax.Array:
    """Centre-crops to a square and resizes (bilinear, antialiased) to ``size`` x ``size``.

    ``size=None`` returns the batch unchanged; a batch already ``size`` square
    is returned as is.
    """
    images = _batch(images_BxHxWx3, "style images")
    if size is None:
        return images
    _, h, w, _ = images.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[:, top : top + side, left : left + side, :]
    if side == size:
        return images
    shape = (images.shape[0], size, size, 3)
    return jnp.clip(jax.image.resize(images, shape, "linear", antialias=True), 0.0, 1.0)


def style_vector(
    params: Mapping, style_BxHxWx3: jax.Array, style_size: int | None = STYLE_SIZE
) -> jax.Array:
    """Style vectors (B, 100) of a batch of style images in [0, 1].

    The images are first passed through :func:`prepare_style` (256 square by
    default); the predictor itself accepts any size.
    """
    from nstjax.arbitrary import nets  # noqa: PLC0415  (Flax only when tracing)

    images = prepare_style(style_BxHxWx3, style_size)
    return nets.StylePredictor().apply(_variables(params, "predict"), images)


def transfer(params: Mapping, content_BxHxWx3: jax.Array, style_vec_Bx100: jax.Array) -> jax.Array:
    """Stylizes a batch of content images in [0, 1] with style vectors.

    ``style_vec_Bx100`` is (B, 100), or (100,) / (1, 100) for the same style on
    every image. Returns (B, H, W, 3) in [0, 1], the content's own size.
    """
    from nstjax.arbitrary import nets  # noqa: PLC0415  (Flax only when tracing)

    content = _batch(content_BxHxWx3, "content images")
    b, h, w, _ = content.shape
    if min(h, w) < MIN_SIDE:
        raise UsageError(f"content images must be at least {MIN_SIDE} pixels on each side")
    vec = jnp.asarray(style_vec_Bx100, jnp.float32).reshape(-1, nets.STYLE_DIM)
    if vec.shape[0] not in (1, b):
        raise UsageError(f"got {vec.shape[0]} style vectors for {b} content images")
    vec = jnp.broadcast_to(vec, (b, nets.STYLE_DIM))
    padded = jnp.pad(content, ((0, 0), (0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")
    out = nets.StyleTransformer().apply(_variables(params, "transform"), padded, vec)
    return out[:, :h, :w, :]


def _stack_styles(styles: jax.Array | Sequence[jax.Array], style_size: int | None) -> jax.Array:
    """(S, h, w, 3) or (h, w, 3) array, or a list of (h, w, 3) / (1, h, w, 3) images."""
    if isinstance(styles, (list, tuple)):
        if not styles:
            raise UsageError("no style images given")
        if style_size is None:
            raise UsageError("a list of style images needs a style_size to bring them to one size")
        batches = [s[None] if jnp.ndim(s) == 3 else s for s in styles]
        return jnp.concatenate([prepare_style(s, style_size) for s in batches])
    return prepare_style(styles[None] if jnp.ndim(styles) == 3 else styles, style_size)


def _blend_weights(blend: Sequence[float] | jax.Array | None, count: int) -> jax.Array:
    if blend is None:
        return jnp.full((count,), 1.0 / count, jnp.float32)
    weights = jnp.asarray(blend, jnp.float32).reshape(-1)
    if weights.shape[0] != count:
        raise UsageError(f"got {weights.shape[0]} blend weights for {count} style images")
    if not isinstance(weights, jax.core.Tracer) and (weights < 0).any() | (weights.sum() <= 0):
        raise UsageError("blend weights must be non-negative and not all zero")
    return weights / weights.sum()


def stylize(
    params: Mapping,
    content_BxHxWx3: jax.Array,
    styles: jax.Array | Sequence[jax.Array],
    strength: float | jax.Array = 1.0,
    blend: Sequence[float] | jax.Array | None = None,
    style_size: int | None = STYLE_SIZE,
) -> jax.Array:
    """Stylizes every content image with one style, or a weighted blend of several.

    Args:
      params: imported parameters (see the module docstring).
      content_BxHxWx3: content batch in [0, 1], any size of at least 8x8.
      styles: style images in [0, 1]: an (S, h, w, 3) or (h, w, 3) array, or a
        list of (h, w, 3) arrays of any sizes; each goes through
        :func:`prepare_style`.
      strength: 1 is the full style, 0 the content image's own style; the
        vector used is ``strength * style + (1 - strength) * content_style``
        where ``content_style`` is each content image's own style vector
        (as in Magenta's demo). Values outside [0, 1] extrapolate.
      blend: weights of the S style vectors (normalised to sum 1; non-negative);
        ``None`` averages them equally.
      style_size: side the style images are brought to (``None``: as given).

    Returns:
      (B, H, W, 3) stylized images in [0, 1].
    """
    content = _batch(content_BxHxWx3, "content images")
    style_images = _stack_styles(styles, style_size)
    weights = _blend_weights(blend, style_images.shape[0])
    vec = (weights @ style_vector(params, style_images, None))[None]
    if not (isinstance(strength, (int, float)) and strength == 1.0):
        own = style_vector(params, content, style_size)
        vec = strength * vec + (1.0 - strength) * own
    return transfer(params, content, vec)
