"""A panel of distances: how far an output image is from its style and content images,
by every registered loss term at once.

Each style distance is a registered style kind (``gram``, ``meanstd``, ``mmd_rbf``, ...,
and any kind a user registered) evaluated on the Gatys layers relu1_1..relu5_1 with
equal layer weights (their mean) against the style image(s); each content distance
(``mse`` and ``selfsim`` by default) on relu4_2 against the content image. Kinds use
their default options unless given as term strings (``"mmd_rbf:bandwidth=2"``);
stochastic kinds draw their positions / directions from one fixed key (``seed``), the
same for every image, so the numbers are deterministic and comparable.

The same numbers for the content image itself, as if it were the output, give the
scale: a normalized style distance is ``d(output) / d(photo)`` (1.0: no closer to the
style than the photo; 0: the style's own statistics). Content distances of the photo
are 0, so a normalized content distance is ``d(output) / d(style image)``, the style
image(s) resized to the output's size (1.0: as far from the photo's content as the
painting itself).

Every image goes through VGG19 once (the union of the layers); the kinds' ``targets``
and ``loss`` functions are then evaluated from those features, straight from the
registry. Features, targets and scores are compiled programs
(:mod:`nstjax.panel_programs`): one compile per image shape. Usage::

    panel = Panel(vgg_params, content_HxWx3, [style_HxWx3], pooling="avg")
    raw, normalized = panel(output_HxWx3)       # {"style/gram": ..., "content/mse": ...}
    raw, normalized = distance_panel(vgg_params, output, content, [style])  # one-off

Images are pixel space: float ``H x W x 3`` in [0, 255]; the output has the content
image's size (as a stylization does). Content images longer than ``max_side``
(:data:`MAX_SIDE` px by default) are scored at that long side, outputs resized the same
way: the panel is a diagnostic, and at 1024x1024 its full-size distances (patches,
histograms, kernels) took more memory than the run itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from nstjax import aot, image, panel_refs
from nstjax import panel_programs as programs
from nstjax.errors import UsageError
from nstjax.panel_programs import (
    CONTENT_KINDS,
    CONTENT_LAYERS,
    FAST_COMPILE_PIXELS,
    GATYS_LAYERS,
    MAX_SIDE,
    ONE_OFF_OPTIONS,
    Spec,
    make_spec,
)
from nstjax.settings import blend_weights
from nstjax.terms import registry
from nstjax.weights.preprocessing import CAFFE, Preprocessing

__all__ = ["CONTENT_KINDS", "CONTENT_LAYERS", "GATYS_LAYERS", "MAX_SIDE", "Panel", "Spec",
           "distance_panel", "fast_compiled", "make_spec", "prebuild", "prebuild_key",
           "scored_hw"]  # fmt: skip


# ----------------------------------------------------------------------------- API


def _pixels(img, what: str) -> np.ndarray:
    arr = np.asarray(img, np.float32)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise UsageError(f"panel {what} must be an H x W x 3 pixel array, got {arr.shape}")
    return arr


def _floats(d: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()}


class Panel:
    """The distances of output images to one content image and its style image(s).

    Construction computes, once: the style targets (one forward per style image), the
    content targets and the content image's own distances (one forward), and the
    style images' content distances (one forward each, resized to the content's size).
    Calling the panel on an output costs one forward and the distances.

    Args:
      vgg_params: VGG19 params (``weights.params``; a Job's ``vgg_params``).
      content: the content image, pixel space ``H x W x 3`` (the outputs' size).
      styles: one or several style images (any sizes).
      blend: the style images' weights (default equal), as ``style_blend``.
      style_kinds / content_kinds: kinds or term strings (``"mmd_rbf:bandwidth=2"``,
        ``"gram:norm=chw,name=style/gram_chw"``); ``style_kinds=None``: every style kind
        registered now.
      style_layers / content_layers: where the distances are measured (each the mean
        over its layers).
      pooling, preprocessing, ceil_mode: the network's, as the run's objective
        (:meth:`for_objective` takes them from one).
      seed: the fixed key of the stochastic kinds.
      max_side: a content image whose long side exceeds it is scored resized to that
        long side, its style images and outputs by the same factor (None: full size).

    Attributes:
      hw: the size the distances are measured at; ``out_hw`` the outputs' own.
      photo: the content image's own distances (its content distances are 0).
      painting: the style image(s)' distances, each resized to the content's size
        (blend-weighted).
      scale: the denominators of :meth:`normalize`: the photo's style distances and the
        painting's content distances.
      scored: whether construction scored the references (False: read back from
        :mod:`nstjax.panel_refs`), i.e. called, hence compiled, the score programs.
    """

    def __init__(
        self,
        vgg_params,
        content,
        styles,
        *,
        blend: Sequence[float] | None = None,
        style_kinds: Sequence[str] | None = None,
        content_kinds: Sequence[str] | None = CONTENT_KINDS,
        style_layers: Sequence[str] = GATYS_LAYERS,
        content_layers: Sequence[str] = CONTENT_LAYERS,
        pooling: str = "avg",
        preprocessing: Preprocessing = CAFFE,
        ceil_mode: bool | None = None,
        seed: int = 0,
        max_side: int | None = MAX_SIDE,
    ):
        self.spec = make_spec(
            style_kinds,
            content_kinds,
            style_layers=style_layers,
            content_layers=content_layers,
            pooling=pooling,
            preprocessing=preprocessing,
            ceil_mode=ceil_mode,
        )
        if isinstance(styles, np.ndarray) and styles.ndim == 3:
            styles = [styles]
        styles = [_pixels(s, "style image") for s in styles]
        if not styles:
            raise UsageError("the panel needs at least one style image")
        content = _pixels(content, "content image")
        self.out_hw = tuple(content.shape[:2])
        self.hw = scored_hw(self.out_hw, max_side)
        if self.hw != self.out_hw:  # content and styles alike
            r = max_side / max(self.out_hw)

            def scaled(x):
                return image.resize(x, *_scaled_hw(x.shape[:2], r))

            content, styles = scaled(content), [scaled(s) for s in styles]
        self.blend = np.asarray(blend_weights(blend, len(styles)), np.float32)
        self.params = jax.device_put(vgg_params)  # aligned host arrays: no copy on CPU
        self.key = jax.random.PRNGKey(seed)
        spec = self.spec
        per_style = [
            programs.targets(
                spec,
                "style",
                programs.forward(spec, self.params, s[None], spec.style_layers),
                self.hw,
            )  # fmt: skip
            for s in styles
        ]
        self.style_targets = {}
        for k, name, _ in spec.style:
            kind = registry.get(name)
            if kind.blend is None or len(styles) == 1:
                ts = [p[k] for p in per_style]
                self.style_targets[k] = ts if len(ts) > 1 else ts[0]
            else:
                self.style_targets[k] = {
                    layer: kind.blend(
                        [np.asarray(p[k][layer]) for p in per_style], list(self.blend)
                    )  # fmt: skip
                    for layer in spec.style_layers
                }
        feats = programs.forward(spec, self.params, content[None], spec.layers)
        self.content_targets = programs.targets(spec, "content", feats, self.hw)
        self.photo, self.painting = self._references(feats, content, styles, seed)
        style_keys = {k for k, _, _ in spec.style}
        self.scale = {k: self.photo[k] if k in style_keys else self.painting[k] for k in self.photo}

    @classmethod
    def for_objective(cls, obj, vgg_params, content, styles, **kwargs) -> Panel:
        """A panel with an :class:`~nstjax.objective.Objective`'s pooling,
        preprocessing and pooling rounding (e.g. ``job.program.objective``)."""
        kwargs.setdefault("pooling", obj.pooling)
        kwargs.setdefault("preprocessing", obj.preprocessing)
        kwargs.setdefault("ceil_mode", obj.ceil_mode)
        return cls(vgg_params, content, styles, **kwargs)

    def _references(self, feats, content, styles, seed):
        """The photo's and the painting's distances (:attr:`photo`, :attr:`painting`):
        read back from :mod:`nstjax.panel_refs` where kept, else scored (the content
        image's features ``feats``; each style image resized to :attr:`hw`,
        blend-weighted) and kept."""
        k = panel_refs.key(self.spec, self.params, content, styles, self.blend, seed)
        kept = panel_refs.load(k)
        photo, painting = kept["photo"], kept["painting"]
        keys = sorted(self.spec.keys)
        self.scored = not all(x in photo and x in painting for x in keys)
        if self.scored:
            photo = self._score(feats)
            per_style = [
                self._score(
                    programs.forward(
                        self.spec, self.params, image.resize(s, *self.hw)[None], self.spec.layers
                    )
                )  # fmt: skip
                for s in styles
            ]
            painting = {
                x: float(sum(w * p[x] for w, p in zip(self.blend, per_style, strict=True)))
                for x in keys
            }
            panel_refs.store(k, {"photo": photo, "painting": painting})
        return {x: photo[x] for x in keys}, {x: painting[x] for x in keys}

    def _score(self, feats) -> dict[str, float]:
        out = programs.score(
            self.spec, feats, self.style_targets, self.content_targets, self.blend, self.key
        )
        return dict(sorted(_floats(out).items()))

    def distances(self, output) -> dict[str, float]:
        """The raw distances of ``output`` (pixel space, the content's size)."""
        output = _pixels(output, "output image")
        if output.shape[:2] not in (self.out_hw, tuple(self.hw)):
            raise UsageError(f"panel output is {output.shape[:2]}, the content image "
                             f"{self.out_hw}")  # fmt: skip
        if output.shape[:2] != tuple(self.hw):
            output = image.resize(output, *self.hw)
        return self._score(programs.forward(self.spec, self.params, output[None], self.spec.layers))

    def normalize(self, raw: Mapping[str, float]) -> dict[str, float]:
        """``raw[k] / scale[k]`` (NaN where the scale is 0)."""
        return {
            k: (float(v) / self.scale[k]) if self.scale[k] > 0 else float("nan")
            for k, v in raw.items()
        }

    def __call__(self, output) -> tuple[dict[str, float], dict[str, float]]:
        """``(raw, normalized)`` distances of ``output``."""
        raw = self.distances(output)
        return raw, self.normalize(raw)


def _scaled_hw(hw, r: float) -> tuple[int, int]:
    return max(1, round(hw[0] * r)), max(1, round(hw[1] * r))


def scored_hw(content_hw, max_side: int | None = MAX_SIDE) -> tuple[int, int]:
    """The size a panel of a content image of ``content_hw`` measures its distances at:
    its own, or resized to a long side of ``max_side``."""
    hw = (int(content_hw[0]), int(content_hw[1]))
    if max_side is None or max(hw) <= max_side:
        return hw
    return _scaled_hw(hw, max_side / max(hw))


def fast_compiled(content_hw) -> bool:
    """Whether the panel of a content image of ``content_hw`` (:data:`MAX_SIDE`)
    compiles for a short compile (:data:`FAST_COMPILE_PIXELS`; its ``hist`` and ``mrf``
    apart)."""
    h, w = scored_hw(content_hw)
    return h * w <= FAST_COMPILE_PIXELS


def prebuild_key(obj, content, styles, style_kinds=None,
                 content_kinds=CONTENT_KINDS) -> str | None:  # fmt: skip
    """The store's key of :func:`prebuild`'s work for these arguments, from the images'
    shapes and the panel's spec alone (nothing traced): a run asks :func:`aot.known`
    before it starts a compile child for a panel. None where the store cannot key it
    (e.g. a loss kind registered from user code)."""
    spec = make_spec(style_kinds, content_kinds, pooling=obj.pooling,
                     preprocessing=obj.preprocessing, ceil_mode=obj.ceil_mode)  # fmt: skip
    shapes = [jax.ShapeDtypeStruct(np.shape(x), np.float32) for x in (content, *styles)]
    return aot.key("panel.prebuild", (spec, MAX_SIDE, FAST_COMPILE_PIXELS), shapes,
                   ONE_OFF_OPTIONS)  # fmt: skip


def prebuild(obj, vgg_params, content, styles, blend, style_kinds=None,
             content_kinds=CONTENT_KINDS) -> None:  # fmt: skip
    """Compiles a ``Panel.for_objective(...)``'s programs into the store, keeps its
    references (:mod:`nstjax.panel_refs`) and marks :func:`prebuild_key` done: a compile
    child's work (:mod:`nstjax.child`; ``Job.prewarm_panel``)."""
    panel = Panel.for_objective(obj, vgg_params, content, styles, blend=blend,
                                style_kinds=style_kinds, content_kinds=content_kinds)  # fmt: skip
    if not panel.scored:  # the references were kept: nothing compiled the score programs
        spec = panel.spec
        zeros = np.zeros((1, *panel.hw, 3), np.float32)
        feats = programs.forward(spec, panel.params, zeros, spec.layers)
        programs.score(spec, feats, panel.style_targets, panel.content_targets, panel.blend,
                       panel.key, precompile=True)  # fmt: skip
    aot.mark_done(prebuild_key(obj, content, styles, style_kinds, content_kinds))


def distance_panel(
    vgg_params, output, content, styles, **kwargs
) -> tuple[dict[str, float], dict[str, float]]:
    """``Panel(vgg_params, content, styles, **kwargs)(output)``: raw and normalized
    distances in one call (build a :class:`Panel` to score many outputs)."""
    return Panel(vgg_params, content, styles, **kwargs)(output)
