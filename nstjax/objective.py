"""The objective: a weighted sum of registered loss terms over one VGG forward.

Static structure (the terms with their kinds, layers and options; pooling;
preprocessing; convolution policy) lives in a hashable :class:`Objective` and decides
the compiled program. Everything numeric (alpha, beta, gamma, each term's weight and
per-layer weights, style blend weights, targets, VGG params) is a pytree argument, so
changing a number never recompiles.

The total is (Gatys et al. 2016, eq. 7, generalised to any number of terms)::

    L = alpha * sum_{content terms t} w_t sum_l w_tl E_tl
      + beta  * sum_{style terms t}   w_t sum_l w_tl E_tl
      + gamma * sum_{image terms t}   w_t E_t(x)

and the metrics report every weighted term by name, plus the three role sums under the
historical keys ``content_loss``, ``style_loss`` and ``tv_loss``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import aot, conv, vgg
from nstjax.errors import UsageError
from nstjax.terms import registry
from nstjax.terms.registry import Term
from nstjax.weights.preprocessing import CAFFE, Preprocessing

ROLE_KEYS = {"content": "content_loss", "style": "style_loss", "image": "tv_loss"}
ROLE_WEIGHTS = {"content": "alpha", "style": "beta", "image": "gamma"}
RECORD_KEYS = ("loss", "content_loss", "style_loss", "tv_loss")


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the compiled loss computes (static, hashable)."""

    terms: tuple[Term, ...]
    pooling: str = "max"
    preprocessing: Preprocessing = CAFFE
    conv_impl: str = conv.DEFAULT_IMPL
    ceil_mode: bool = False  # Caffe's pooling of odd-sized maps (see vgg.pool2x2)
    regions: int = 0  # spatial control: style image r guides region r (0: none)
    mask_mode: str = "mean"  # how masks follow the network (nstjax.masks)
    remat: bool = False  # recompute activations in the backward pass (less memory)

    def __post_init__(self):
        object.__setattr__(self, "terms", tuple(self.terms))
        if self.regions:
            for i in self.role_terms("style"):
                if registry.get(self.terms[i].kind).masked_loss is None:
                    raise UsageError(
                        f"loss term {self.terms[i].kind!r} cannot take region masks; "
                        "spatial control works with: "
                        f"{sorted(k for k, v in registry.registered().items() if v.masked_loss)}"
                    )
        if not any(registry.get(t.kind).reads == "features" for t in self.terms):
            raise UsageError("the objective needs at least one content or style term")
        for t in self.terms:
            if registry.get(t.kind).reads == "features" and not t.layers:
                raise UsageError(f"loss term {t.name!r} has no layers")
            vgg.check_layers(t.layers, f"{t.name} layer")
        if len({t.name for t in self.terms}) != len(self.terms):
            raise UsageError(f"loss term names must be unique: {[t.name for t in self.terms]}")
        if self.pooling not in vgg.POOLINGS:
            raise UsageError(f"unknown pooling {self.pooling!r}; use one of {vgg.POOLINGS}")
        conv.check_impl(self.conv_impl)

    @property
    def layers(self) -> tuple[str, ...]:
        """The union of the layers the terms read (one VGG forward computes them all)."""
        return tuple(dict.fromkeys(layer for t in self.terms for layer in t.layers))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    @property
    def record_keys(self) -> tuple[str, ...]:
        """Names of the per-step record: the total, the three role sums, every term."""
        return (*RECORD_KEYS, *self.names)

    def role_terms(self, role: str) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.terms) if registry.get(t.kind).role == role)


def gatys(
    content_layers=("conv4_2",),
    style_layers=("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"),
    pooling: str = "max",
    gram_norm: str = "gatys",
    preprocessing: Preprocessing = CAFFE,
    conv_impl: str = conv.DEFAULT_IMPL,
    ceil_mode: bool = False,
) -> Objective:
    """Gatys et al.'s objective: content ``mse``, style ``gram``, ``tv`` (eq. 7)."""
    terms = []
    if content_layers:
        terms.append(Term("mse", "content/mse", tuple(content_layers)))
    if style_layers:
        terms.append(Term("gram", "style/gram", tuple(style_layers), (("norm", gram_norm),)))
    terms.append(Term("tv", "tv"))
    return Objective(tuple(terms), pooling, preprocessing, conv_impl, ceil_mode)


def layer_weights(values: Sequence[float] | None, layers: Sequence[str], what: str) -> np.ndarray:
    """Per-layer weights; None means equal weights 1/len(layers) (Gatys' w_l = 1/5)."""
    n = len(layers)
    if values is None or len(values) == 0:
        return np.full((n,), 1.0 / max(n, 1), np.float32)
    if len(values) != n:
        raise UsageError(f"{what} has {len(values)} values for {n} layers {list(layers)}")
    return np.asarray(values, np.float32)


def make_weights(
    obj: Objective,
    alpha=1.0,
    beta=1e3,
    gamma=0.0,
    content_layer_weights=None,
    style_layer_weights=None,
    term_weights: Sequence[float] | None = None,
    term_layer_weights: Sequence[Sequence[float] | None] | None = None,
    blend: Sequence[float] | None = None,
) -> dict:
    """The dynamic numbers of the loss.

    ``term_layer_weights[i]`` (if given and not None) overrides term i's layer weights;
    otherwise content and style terms use ``content_layer_weights`` /
    ``style_layer_weights`` (None: equal, summing to 1). ``blend`` (the style images'
    weights) is needed when a style term scores each style image separately.
    """
    default = {"content": content_layer_weights, "style": style_layer_weights, "image": None}
    per_term = []
    for i, t in enumerate(obj.terms):
        role = registry.get(t.kind).role
        own = term_layer_weights[i] if term_layer_weights is not None else None
        values = own if own is not None else default[role]
        w = 1.0 if term_weights is None else term_weights[i]
        per_term.append(
            {
                "weight": np.float32(w),
                "layers": layer_weights(
                    values, t.layers, f"{t.name if own is not None else role} layer weights"
                ),
            }
        )
    out = {
        "alpha": np.float32(alpha),
        "beta": np.float32(beta),
        "gamma": np.float32(gamma),
        "terms": per_term,
    }
    if needs_blend(obj):
        if blend is None:
            raise UsageError("this objective scores style images separately: give blend weights")
        out["blend"] = np.asarray(blend, np.float32)
    return out


def needs_blend(obj: Objective) -> bool:
    """Whether some style term scores each style image separately (no target blend)."""
    return any(registry.get(obj.terms[i].kind).blend is None for i in obj.role_terms("style"))


def _features(obj: Objective, vgg_params, pixels_BxHxWx3, layers):
    # Flax on first trace only: a warm run reads its programs whole and never needs it
    from nstjax import vgg_net  # noqa: PLC0415

    return vgg_net.features(
        vgg_params,
        obj.preprocessing.to_network(pixels_BxHxWx3),
        layers,
        obj.pooling,
        conv_impl=obj.conv_impl,
        ceil_mode=obj.ceil_mode,
    )


def one_off(obj: Objective) -> Objective:
    """``obj`` with XLA's convolution: for what runs once per run (targets, final
    losses), where Winograd's longer compile would not pay off. Same function, to
    float32 rounding."""
    return dataclasses.replace(obj, conv_impl="xla", remat=False)


def feature_hw(layer: str, hw: tuple[int, int], ceil_mode: bool = False) -> tuple[int, int]:
    """Spatial size of ``layer``'s output for an image of size ``hw``."""
    return vgg.feature_hw(layer, hw[0], hw[1], ceil_mode)


def _reference_targets(obj: Objective, idx: tuple, vgg_params, x_1xHxWx3, out_hw,
                       layer_masks=None):  # fmt: skip
    """Targets of terms ``idx`` from one reference image: ``{term index: {layer: t}}``.
    With ``layer_masks`` (``{layer: H' x W'}``, spatial control), the kinds'
    ``masked_targets`` instead of ``targets``."""
    layers = tuple(dict.fromkeys(layer for i in idx for layer in obj.terms[i].layers))
    feats = _features(obj, vgg_params, x_1xHxWx3, layers)
    out = {}
    for i in idx:
        t = obj.terms[i]
        kind = registry.get(t.kind)
        out[i] = {}
        for layer in t.layers:
            shape = (*feature_hw(layer, out_hw, obj.ceil_mode), feats[layer].shape[-1])
            if layer_masks is None:
                out[i][layer] = kind.targets(feats[layer], shape, **t.option_dict())
            else:
                out[i][layer] = kind.masked_targets(
                    feats[layer], layer_masks[layer], shape, **t.option_dict()
                )
    return out


# Targets are computed once per run, compiled (op-by-op VGG would be slow).
_reference_targets_jit = aot.Jit(_reference_targets, static_argnums=(0, 1, 4))


def targets(
    obj: Objective,
    vgg_params,
    content_HxWx3,
    styles: Sequence,
    blend: Sequence[float],
) -> list:
    """Every term's targets, in term order: ``{layer: target}`` per term (None for
    image terms); a style term without a ``blend`` function gets a list, one
    ``{layer: target}`` per style image, and the loss blends its values. With
    ``obj.regions`` (spatial control) the style terms' targets are
    :func:`nstjax.guided.targets`' (None here)."""
    obj = one_off(obj)
    out_hw = tuple(np.shape(content_HxWx3)[:2])
    # committed inputs: the program is kept whole (nstjax.aot), so a warm run does not
    # trace it (host arrays, 64-byte aligned by cache.aligned: no copy on CPU)
    vgg_params = jax.device_put(vgg_params)
    result: list = [None] * len(obj.terms)
    if obj.role_terms("content"):
        x = jax.device_put(np.asarray(content_HxWx3, np.float32)[None])
        idx = obj.role_terms("content")
        for i, t in _reference_targets_jit(obj, idx, vgg_params, x, out_hw).items():
            result[i] = t
    if obj.role_terms("style") and not obj.regions:
        for i, t in _style_targets(obj, vgg_params, out_hw, styles, blend).items():
            result[i] = t
    return result


def _style_targets(obj: Objective, vgg_params, out_hw, styles, blend) -> dict:
    """Style terms' targets, grouped by the style images they read (all of them, or the
    one their ``style=`` names, at their ``style_scale``): one VGG forward per image."""
    from nstjax import image  # noqa: PLC0415

    groups: dict = {}
    for i in obj.role_terms("style"):
        t = obj.terms[i]
        if t.style is not None and t.style >= len(styles):
            raise UsageError(f"loss term {t.name!r} uses style={t.style}, but there are "
                             f"{len(styles)} style images")  # fmt: skip
        groups.setdefault((t.style, t.style_scale), []).append(i)
    out = {}
    for (style, scale), idx in groups.items():
        imgs = list(styles) if style is None else [styles[style]]
        weights = list(blend) if style is None else [1.0]
        if scale != 1.0:
            imgs = [image.resize(np.asarray(s, np.float32), max(1, round(s.shape[0] * scale)),
                                 max(1, round(s.shape[1] * scale))) for s in imgs]  # fmt: skip
        per_style = [
            _reference_targets_jit(
                obj,
                tuple(idx),
                vgg_params,
                jax.device_put(np.asarray(s, np.float32)[None]),
                out_hw,
            )  # fmt: skip
            for s in imgs
        ]
        for i in idx:
            kind = registry.get(obj.terms[i].kind)
            if len(per_style) == 1:
                out[i] = per_style[0][i]
            elif kind.blend is None:
                out[i] = [p[i] for p in per_style]
            else:
                out[i] = {
                    layer: kind.blend([np.asarray(p[i][layer]) for p in per_style], weights)
                    for layer in obj.terms[i].layers
                }
    return out


def grey_to_rgb(pixels_BxHxWxC):
    """Luminance-only transfer optimizes one channel: VGG sees it as grey (Y, Y, Y)."""
    if pixels_BxHxWxC.shape[-1] == 1:
        return jnp.broadcast_to(pixels_BxHxWxC, (*pixels_BxHxWxC.shape[:-1], 3))
    return pixels_BxHxWxC


def features(obj: Objective, vgg_params, pixels_BxHxWx3) -> dict:
    """The activations of every layer the terms read, for a pixel-space RGB batch."""
    if obj.remat:
        # Keep only the pooled maps (4x smaller than their block's activations) and the
        # requested layers; recompute the convolutions of each block in the backward
        # pass: about one more forward per step.
        policy = jax.checkpoint_policies.save_only_these_names(
            *(name for name in vgg.LAYERS if name.startswith("pool"))
        )
        return jax.checkpoint(lambda x: _features(obj, vgg_params, x, obj.layers), policy=policy)(
            pixels_BxHxWx3
        )
    return _features(obj, vgg_params, pixels_BxHxWx3, obj.layers)


def loss(obj: Objective, pixels_BxHxWx3, vgg_params, targets, weights, key=None):
    """Total loss and its parts for a pixel-space image batch (summed over the batch).

    ``targets`` comes from :func:`targets`, ``weights`` from :func:`make_weights`;
    ``key`` is a PRNG key (folded with the step by the caller) for stochastic terms.
    Returns ``(total, parts)``; ``parts`` holds the role sums under :data:`RECORD_KEYS`
    and ``parts["terms"]``, the weighted value of every term (they sum to the total).
    """
    if key is None:
        key = jax.random.PRNGKey(0)
    pixels_BxHxWx3 = grey_to_rgb(pixels_BxHxWx3)
    feats = features(obj, vgg_params, pixels_BxHxWx3)

    def layer_value(i, j, layer, k_l):
        t = obj.terms[i]
        kind, opts, target = registry.get(t.kind), t.option_dict(), targets[i]
        if layer is None:  # a pixel term
            return kind.loss(pixels_BxHxWx3, None, k_l, **opts)
        if isinstance(target, dict) and "regions" in target:  # spatial control
            return sum(
                kind.masked_loss(feats[layer], tr[layer], target["masks"][layer][r], k_l, **opts)
                for r, tr in enumerate(target["regions"])
            )
        if isinstance(target, list):  # one target per style image
            return sum(
                weights["blend"][s] * kind.loss(feats[layer], ts[layer], k_l, **opts)
                for s, ts in enumerate(target)
            )
        return kind.loss(feats[layer], target[layer], k_l, **opts)

    return combine(obj, weights, key, layer_value)


def combine(obj: Objective, weights, key, layer_value):
    """The weighted sum of eq. 7 from per-layer values: ``layer_value(i, j, layer, key)``
    is term i's unweighted value at its j-th layer (``layer=None`` for a pixel term),
    per batch element. Returns ``(total, parts)``. Shared by :func:`loss` and the tiled
    gradient (:mod:`nstjax.tiles`), so both weigh the terms the same way."""
    sums = {"content": jnp.float32(0.0), "style": jnp.float32(0.0), "image": jnp.float32(0.0)}
    values = []
    for i, t in enumerate(obj.terms):
        kind = registry.get(t.kind)
        w = weights["terms"][i]
        k_t = jax.random.fold_in(key, i)
        if kind.reads == "pixels":
            raw = jnp.sum(layer_value(i, None, None, k_t))
        else:
            raw = jnp.float32(0.0)
            for j, layer in enumerate(t.layers):
                l_B = layer_value(i, j, layer, jax.random.fold_in(k_t, j))
                raw = raw + w["layers"][j] * jnp.sum(l_B)
        value = weights[ROLE_WEIGHTS[kind.role]] * (w["weight"] * raw)
        values.append(value)
        sums[kind.role] = sums[kind.role] + value
    parts = {ROLE_KEYS[role]: v for role, v in sums.items()}
    parts["terms"] = tuple(values)
    total = parts["content_loss"] + parts["style_loss"] + parts["tv_loss"]
    return total, parts


def record(total, parts) -> jax.Array:
    """The per-step record vector, ordered as :attr:`Objective.record_keys`."""
    return jnp.stack(
        [total, parts["content_loss"], parts["style_loss"], parts["tv_loss"], *parts["terms"]]
    )
