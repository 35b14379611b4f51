"""The Gatys objective: targets from the content and style images, and a pure loss.

Static structure (layer sets, pooling, Gram normalization, preprocessing) lives in
a hashable :class:`Spec` and decides the compiled program. Everything numeric
(alpha, beta, gamma, per-layer weights, targets, VGG params) is a pytree argument,
so changing a weight never recompiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import conv, losses, vgg
from nstjax.errors import UsageError
from nstjax.weights.preprocessing import CAFFE, Preprocessing


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the compiled loss computes (static)."""

    content_layers: tuple[str, ...] = ("conv4_2",)
    style_layers: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    pooling: str = "max"
    gram_norm: str = "gatys"
    preprocessing: Preprocessing = CAFFE
    conv_impl: str = conv.DEFAULT_IMPL

    def __post_init__(self):
        object.__setattr__(self, "content_layers", tuple(self.content_layers))
        object.__setattr__(self, "style_layers", tuple(self.style_layers))
        vgg.check_layers(self.content_layers, "content layer")
        vgg.check_layers(self.style_layers, "style layer")
        if not self.content_layers and not self.style_layers:
            raise UsageError("need at least one content or style layer")
        losses.check_gram_norm(self.gram_norm)
        if self.pooling not in vgg.POOLINGS:
            raise UsageError(f"unknown pooling {self.pooling!r}; use one of {vgg.POOLINGS}")
        conv.check_impl(self.conv_impl)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))


def layer_weights(values: Sequence[float] | None, layers: Sequence[str], what: str) -> np.ndarray:
    """Per-layer weights; None means equal weights 1/len(layers) (Gatys' w_l = 1/5)."""
    n = len(layers)
    if values is None or len(values) == 0:
        return np.full((n,), 1.0 / max(n, 1), np.float32)
    if len(values) != n:
        raise UsageError(f"{what} has {len(values)} values for {n} layers {list(layers)}")
    return np.asarray(values, np.float32)


def make_weights(
    spec: Spec, alpha=1.0, beta=1e3, gamma=0.0, content_layer_weights=None, style_layer_weights=None
) -> dict:
    """The dynamic weight pytree of the loss: total = alpha*L_c + beta*L_s + gamma*L_tv."""
    return {
        "alpha": np.float32(alpha),
        "beta": np.float32(beta),
        "gamma": np.float32(gamma),
        "content": layer_weights(
            content_layer_weights, spec.content_layers, "content layer weights"
        ),
        "style": layer_weights(style_layer_weights, spec.style_layers, "style layer weights"),
    }


def _features(spec: Spec, vgg_params, pixels_BxHxWx3, layers):
    return vgg.features(
        vgg_params,
        spec.preprocessing.to_network(pixels_BxHxWx3),
        layers,
        spec.pooling,
        conv_impl=spec.conv_impl,
    )


def _mean_grams(spec: Spec, vgg_params, pixels_BxHxWx3, layers):
    feats = _features(spec, vgg_params, pixels_BxHxWx3, layers)
    return {k: losses.gram(f) / (f.shape[1] * f.shape[2]) for k, f in feats.items()}


def one_off(spec: Spec) -> Spec:
    """``spec`` with XLA's convolution: for what runs once per run (targets, final
    losses), where Winograd's longer compile would not pay off. Same function, to
    float32 rounding."""
    return dataclasses.replace(spec, conv_impl="xla")


# Targets are computed once per run, compiled (op-by-op VGG would be slow).
_features_jit = jax.jit(_features, static_argnums=(0, 3))
_mean_grams_jit = jax.jit(_mean_grams, static_argnums=(0, 3))


def content_targets(spec: Spec, vgg_params, content_HxWx3) -> dict:
    """Content features ``{layer: 1xHxWxC}``."""
    if not spec.content_layers:
        return {}
    x = np.asarray(content_HxWx3, np.float32)[None]
    return _features_jit(one_off(spec), vgg_params, x, spec.content_layers)


def style_targets(
    spec: Spec, vgg_params, styles: Sequence, blend: Sequence[float], content_hw: tuple[int, int]
) -> dict:
    """Blended target Grams ``sum_s w_s A_s``, rescaled to the content image's size.

    A Gram sums over positions, so a style image of M_s positions gives Grams M_s/M
    times those of an M-position image with the same statistics; each target is
    rescaled by M/M_s so that style images of any size compare with the output.
    Blending happens on the host (small CxC arrays), so it compiles nothing.
    """
    if not spec.style_layers:
        return {}
    total: dict = {}
    for style, w in zip(styles, blend, strict=True):
        x = np.asarray(style, np.float32)[None]
        grams = _mean_grams_jit(one_off(spec), vgg_params, x, spec.style_layers)
        for layer, g in grams.items():
            f = 2 ** vgg.downsampling(layer)
            m_out = (content_hw[0] // f) * (content_hw[1] // f)
            g = np.asarray(g, np.float32) * np.float32(w * m_out)
            total[layer] = g if layer not in total else total[layer] + g
    return total


def loss(spec: Spec, pixels_BxHxWx3, vgg_params, targets, weights):
    """Total loss and its parts for a pixel-space image batch (summed over the batch).

    ``targets`` is ``{"content": {layer: feat}, "style": {layer: gram}}``; ``weights``
    comes from :func:`make_weights`. The parts are the weighted terms, so
    ``total = content_loss + style_loss + tv_loss``.
    """
    feats = _features(spec, vgg_params, pixels_BxHxWx3, spec.layers)
    content = jnp.float32(0.0)
    for i, layer in enumerate(spec.content_layers):
        l_B = losses.content_layer_loss(feats[layer], targets["content"][layer])
        content = content + weights["content"][i] * jnp.sum(l_B)
    style = jnp.float32(0.0)
    for i, layer in enumerate(spec.style_layers):
        l_B = losses.style_layer_loss(feats[layer], targets["style"][layer], spec.gram_norm)
        style = style + weights["style"][i] * jnp.sum(l_B)
    tv = jnp.sum(losses.tv_loss(pixels_BxHxWx3))
    parts = {
        "content_loss": weights["alpha"] * content,
        "style_loss": weights["beta"] * style,
        "tv_loss": weights["gamma"] * tv,
    }
    return parts["content_loss"] + parts["style_loss"] + parts["tv_loss"], parts
