"""The distance panel's specification and compiled programs (:mod:`nstjax.panel` is
its API): what a panel computes (:class:`Spec`), one VGG forward per image, each
distance's targets from one image's features, and every distance of one output.

The programs run a few times per image shape, so they compile for a short compile
(:data:`ONE_OFF_OPTIONS`; small images :data:`FAST_COMPILE_OPTIONS`, but for the
distances of :data:`SLOW_AT_LEVEL_0`, scored apart). Targets that are
the features themselves, reshaped, are left out of the targets program and filled in
with numpy views (:func:`feature_views`, :func:`targets`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import aot, vgg, views, xla_flags
from nstjax.errors import UsageError
from nstjax.settings import PANEL_CONTENT_KINDS
from nstjax.terms import registry
from nstjax.weights.preprocessing import CAFFE, Preprocessing

GATYS_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYERS = ("relu4_2",)
CONTENT_KINDS = PANEL_CONTENT_KINDS
MAX_SIDE = 512


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the panel computes (static, hashable: it decides the compiled programs).

    ``style`` / ``content``: ``(key, kind, options)`` per distance, ``key`` its name in
    the result (``style/<kind>`` unless the term string gave ``name=``)."""

    style: tuple[tuple[str, str, tuple], ...]
    content: tuple[tuple[str, str, tuple], ...]
    style_layers: tuple[str, ...] = GATYS_LAYERS
    content_layers: tuple[str, ...] = CONTENT_LAYERS
    pooling: str = "avg"
    preprocessing: Preprocessing = CAFFE
    ceil_mode: bool = True

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.style_layers, *self.content_layers)))

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _, _ in (*self.style, *self.content))


def _distances(role: str, kinds: Sequence[str] | None) -> tuple[tuple[str, str, tuple], ...]:
    """Parses kinds / term strings of ``role`` (None: every registered kind of it)."""
    names = registry.kinds(role) if kinds is None else tuple(kinds)
    out = []
    for text in names:
        c = registry.parse(text)
        if registry.get(c.kind).role != role:
            raise UsageError(f"panel {role} distances: {c.kind!r} is a "
                             f"{registry.get(c.kind).role} term")  # fmt: skip
        if c.layers is not None or c.layer_weights is not None or c.weight != 1.0:
            raise UsageError(f"panel distance {text!r}: layers and weights are the panel's")
        out.append((c.name or f"{role}/{c.kind}", c.kind, c.options))
    keys = [k for k, _, _ in out]
    if len(set(keys)) != len(keys):
        raise UsageError(f"panel distances must have unique names (use name=), got {keys}")
    return tuple(out)


def make_spec(
    style_kinds: Sequence[str] | None = None,
    content_kinds: Sequence[str] | None = CONTENT_KINDS,
    *,
    style_layers: Sequence[str] = GATYS_LAYERS,
    content_layers: Sequence[str] = CONTENT_LAYERS,
    pooling: str = "avg",
    preprocessing: Preprocessing = CAFFE,
    ceil_mode: bool | None = None,
) -> Spec:
    """A :class:`Spec`; ``ceil_mode=None``: Caffe's ceil pooling for Caffe weights (as
    ``pool_rounding="auto"``)."""
    if pooling not in vgg.POOLINGS:
        raise UsageError(f"unknown pooling {pooling!r}; use one of {vgg.POOLINGS}")
    vgg.check_layers(style_layers, "panel style layer")
    vgg.check_layers(content_layers, "panel content layer")
    return Spec(
        _distances("style", style_kinds),
        _distances("content", content_kinds or ()),
        tuple(style_layers),
        tuple(content_layers),
        pooling,
        preprocessing,
        preprocessing == CAFFE if ceil_mode is None else bool(ceil_mode),
    )


@functools.partial(aot.Jit, static_argnums=(0, 3))
def forward(spec: Spec, params, pixels_1xHxWx3, layers: tuple[str, ...]):
    """One VGG forward: ``{layer: 1 x H' x W' x C}`` for ``layers``."""
    from nstjax import vgg_net  # noqa: PLC0415  (Flax on first trace only)

    x = spec.preprocessing.to_network(pixels_1xHxWx3)
    return vgg_net.features(
        params, x, layers, spec.pooling, conv_impl="xla", ceil_mode=spec.ceil_mode
    )


ONE_OFF_OPTIONS = {"xla_backend_optimization_level": 1, **xla_flags.one_off_compiler_options()}
"""The panel's programs run a few times per image shape: LLVM at level 1 instead of XLA's
2 compiles them faster, calls as fast; for the elemental emitters see
:data:`nstjax.xla_flags.ONE_OFF_FLAGS`."""

FAST_COMPILE_OPTIONS = {**ONE_OFF_OPTIONS, "xla_backend_optimization_level": 0}
FAST_COMPILE_PIXELS = 256 * 256
"""Panels of at most this many pixels compile with :data:`FAST_COMPILE_OPTIONS` (LLVM
level 0), larger ones with :data:`ONE_OFF_OPTIONS`. Level 0 cuts the compile (at 256x192
the score program's: 2.6-3.3 against 7.1-9.1 CPU-seconds) but slows each call in
proportion to the pixels (0.79 against 0.42 s; at 512x384 2.51 against 1.09 s), and a
cold run makes three calls, a warm run one (``benchmarks/compile_options.py``; the
README's "The panel's compile" has the whole-command figures)."""


def _role_targets(spec: Spec, role: str, out_hw: tuple[int, int], channels: Mapping):
    """``(key, layer, fn)`` for each of ``role``'s distances and layers: ``fn(features)``
    is the kind's targets there (``channels``: each layer's channel count)."""
    kinds = spec.style if role == "style" else spec.content
    layers = spec.style_layers if role == "style" else spec.content_layers
    for key, name, options in kinds:
        kind = registry.get(name)
        for layer in layers:
            hwc = (*vgg.feature_hw(layer, *out_hw, spec.ceil_mode), channels[layer])

            def fn(feat, kind=kind, hwc=hwc, options=options):
                return kind.targets(feat, hwc, **dict(options))

            yield key, layer, fn


@functools.cache
def feature_views(spec: Spec, role: str, feat_shapes: tuple, out_hw: tuple[int, int]) -> dict:
    """``{key: {layer: (treedef, [(shape, dtype) of the leaf, or None])}}`` of ``role``'s
    targets, with a ``(shape, dtype)`` where the leaf is the layer's features
    themselves, reshaped (``mrf``, ``sliced_w2``, ``mmd_rbf``'s and ``relaxed_emd``'s
    ``y``, ``mse``). Found by tracing each kind's ``targets`` alone
    (:func:`nstjax.views.leaf_views`), so registered kinds count too.

    :func:`target_leaves` leaves those leaves out of its program and :func:`targets` puts
    the features back in: one program cannot return one buffer twice, and at 512x384
    the style's features as four kinds' targets were 4 x 76 MiB at once."""
    shapes = dict(feat_shapes)
    out: dict = {}
    for key, layer, fn in _role_targets(spec, role, out_hw, {k: s[-1] for k, s in shapes.items()}):
        arg = jax.ShapeDtypeStruct(shapes[layer], jnp.float32)
        out.setdefault(key, {})[layer] = views.leaf_views(fn, arg)
    return out


def feature_shapes(feats) -> tuple:
    return tuple(sorted((k, tuple(v.shape)) for k, v in feats.items()))


@functools.partial(aot.BySize, static_argnums=(0, 1, 3), sized_arg=2,
                   max_pixels=FAST_COMPILE_PIXELS, small=FAST_COMPILE_OPTIONS,
                   large=ONE_OFF_OPTIONS)  # fmt: skip
def target_leaves(spec: Spec, role: str, feats, out_hw: tuple[int, int]):
    """``{key: {layer: [leaf of the target, or None]}}`` of ``role``'s distances from
    one image's features: None where the leaf is the features (:func:`feature_views`);
    :func:`targets` assembles them."""
    found = feature_views(spec, role, feature_shapes(feats), out_hw)
    out: dict = {}
    channels = {k: v.shape[-1] for k, v in feats.items()}
    for key, layer, fn in _role_targets(spec, role, out_hw, channels):
        leaves = jax.tree.leaves(fn(feats[layer]))
        view = found[key][layer][1]
        kept = [None if v else x for x, v in zip(leaves, view, strict=True)]
        out.setdefault(key, {})[layer] = kept
    return out


def targets(spec: Spec, role: str, feats, out_hw: tuple[int, int]) -> dict:
    """``{key: {layer: target}}`` of ``role``'s distances from one image's features
    ``feats``; leaves that are the features themselves are views of ``feats``' arrays
    (no copies), other identical leaves share one buffer (:func:`views.share_identical`)."""
    found = feature_views(spec, role, feature_shapes(feats), out_hw)
    computed = target_leaves(spec, role, feats, out_hw)
    out = {}
    for key, per_layer in computed.items():
        out[key] = {}
        for layer, leaves in per_layer.items():
            treedef, view = found[key][layer]
            full = [np.asarray(feats[layer]).reshape(v[0]) if v else leaf
                    for leaf, v in zip(leaves, view, strict=True)]  # fmt: skip
            out[key][layer] = jax.tree.unflatten(treedef, full)
    return views.share_identical(out)


SLOW_AT_LEVEL_0 = frozenset({"hist", "mrf"})
"""Kinds whose code runs several times slower at LLVM level 0: on a panel small enough
for :data:`FAST_COMPILE_OPTIONS` they are scored by a program of their own compiled with
:data:`ONE_OFF_OPTIONS` (:func:`score`). A kind is here when level 1 saves more over the
three calls of a cold run (the photo, the painting, the output; a warm run makes one)
than it adds to the compile. At 256x192 on the 2-core AVX-512 CPU, each kind's program
alone (``python benchmarks/compile_options.py --per-kind``), compile / call seconds at
level 0 against level 1: ``hist`` (its binned remap: ~25 elementwise operations, a
scatter and four gathers per feature value) 0.29 / 0.668 against 0.76 / 0.108, ``mrf``
0.37 / 0.298 against 0.83 / 0.121; not ``sliced_w2`` (0.42 / 0.132 against 0.86 / 0.074)
and the rest, whose calls differ by less."""


def _scores(spec: Spec, keys: tuple[str, ...] | None, feats, style_targets, content_targets,
            blend, key):  # fmt: skip
    """The distances ``keys`` (None: all) of one image (its features): ``{key: scalar}``;
    each the mean over the role's layers. A per-style-image target list blends the
    losses. Keys fold in each distance's place in ``spec``, whichever ``keys`` are
    scored together."""
    out = {}
    groups = (
        ("style", spec.style, spec.style_layers, style_targets),
        ("content", spec.content, spec.content_layers, content_targets),
    )
    for r, (_, kinds, layers, targets) in enumerate(groups):
        for i, (k, name, options) in enumerate(kinds):
            if keys is not None and k not in keys:
                continue
            kind = registry.get(name)
            opts = dict(options)
            k_t = jax.random.fold_in(jax.random.fold_in(key, r), i)
            total = jnp.float32(0.0)
            for j, layer in enumerate(layers):
                k_l = jax.random.fold_in(k_t, j)
                t = targets[k]
                if isinstance(t, list):
                    v = sum(blend[s] * kind.loss(feats[layer], ts[layer], k_l, **opts)[0]
                            for s, ts in enumerate(t))  # fmt: skip
                else:
                    v = kind.loss(feats[layer], t[layer], k_l, **opts)[0]
                total = total + v
            out[k] = total / len(layers)
    return out


scores = aot.BySize(_scores, static_argnums=(0, 1), sized_arg=2, max_pixels=FAST_COMPILE_PIXELS,
                    small=FAST_COMPILE_OPTIONS, large=ONE_OFF_OPTIONS)  # fmt: skip
"""The scores program: :data:`FAST_COMPILE_OPTIONS` for small images, else
:data:`ONE_OFF_OPTIONS`."""
scores_one_off = scores.large
""":data:`SLOW_AT_LEVEL_0` kinds of a small panel: the large panels' program (one
:class:`~nstjax.aot.Jit`, so a process that scores both loads each executable once)."""


def score_parts(spec: Spec, feats) -> list[tuple]:
    """``[(program, keys)]``: the programs that score ``spec`` for features ``feats``
    and the distances each scores (``None``: all of them)."""
    slow = tuple(k for k, name, _ in (*spec.style, *spec.content) if name in SLOW_AT_LEVEL_0)
    if not slow or scores.pick(spec, None, feats) is scores.large:
        return [(scores, None)]
    rest = tuple(k for k in spec.keys if k not in slow)
    return [(scores, rest), (scores_one_off, slow)] if rest else [(scores_one_off, slow)]


def score(spec: Spec, feats, style_targets, content_targets, blend, key,
          precompile: bool = False) -> dict:  # fmt: skip
    """Every distance of ``spec`` for one image's features (:func:`score_parts`:
    ``{key: scalar}``); ``precompile``: only compiles the programs (``{}``)."""
    out = {}
    for program, keys in score_parts(spec, feats):

        def part(targets, keys=keys):
            return targets if keys is None else {k: v for k, v in targets.items() if k in keys}

        args = (spec, keys, feats, part(style_targets), part(content_targets), blend, key)
        if precompile:
            program.precompile(*args)
        else:
            out.update(program(*args))
    return out
