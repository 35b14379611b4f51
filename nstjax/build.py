"""From settings, images and weights to a :class:`Job`: everything one run needs.

This is the one place that turns :class:`~nstjax.settings.Settings` into compiled-code
inputs, for single runs and sweeps alike:

* the static :class:`Program` (objective terms, optimizer, step plan): hashable, it
  decides the compiled program;
* the dynamic inputs: the initial image, the targets (computed once per run), the loss
  weights, the learning rate and the PRNG key.

Two jobs share one compiled program exactly when :meth:`Job.group_key` is equal: the
same program and weights, and the same shapes of every dynamic input. Nothing lists
"static settings" by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from nstjax import objective, terms, vgg
from nstjax.errors import UsageError
from nstjax.inputs import (
    ImageCache,
    ImageLike,
    check_init,
    color_inputs,
    initial_image,
    luma,
    region_masks,
    upsample,
)
from nstjax.optimizers import OptimizerSpec
from nstjax.settings import Settings, blend_weights
from nstjax.weights import api as weights_api
from nstjax.weights.preprocessing import CAFFE


def _initial_image(settings: Settings, content_HxWx3: np.ndarray, styles: Sequence) -> np.ndarray:
    """:func:`nstjax.inputs.initial_image`, or for ``init="arbitrary"`` the fast network's
    stylization (Ghiasi et al. 2017) of the content with the blended styles."""
    if settings.init != "arbitrary":
        return initial_image(settings, content_HxWx3, styles)
    from nstjax.arbitrary import run  # noqa: PLC0415  (its weights and Flax on first use)

    blend = blend_weights(settings.style_blend, len(styles))
    return run.stylize_pixels(content_HxWx3, styles, 1.0, blend)[0].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Program:
    """The static part of a run: decides the compiled program (hashable)."""

    objective: objective.Objective
    opt: OptimizerSpec
    steps: int
    chunk_size: int
    save_every: int
    loop: str
    tile: int = 0  # tiled gradients (nstjax.tiles): core size in px, 0 = off


@dataclasses.dataclass
class Job:
    """One run, ready for the engine. ``tag`` is the caller's (e.g. a sweep variant)."""

    program: Program
    init_1xHxWx3: np.ndarray
    run: dict  # {"targets", "weights", "lr"}: per-run pytree
    key: np.ndarray  # uint32[2], the run's PRNG key
    settings: Settings
    weights_info: dict
    vgg_params: dict  # the raw VGG19 params (shared by the group; not part of the key)
    tag: Any = None
    content_rgb: np.ndarray | None = None  # luminance-only transfer: for its I and Q
    memory_estimate: dict | None = None  # nstjax.memory.estimate of the run
    images: tuple = ()  # (content HxWx3, [styles], blend): pixel space, as loaded
    panel_child: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def panel(self, output_HxWx3: np.ndarray, cache: dict | None = None) -> dict | None:
        """The distance panel of an output (``nstjax.panel``), or None when switched off.
        ``cache`` shares the panel (its targets and compiled programs) between jobs."""
        distances = self.settings.panel_distances()
        if distances is None or not self.images:
            return None
        from nstjax import panel as panel_lib  # noqa: PLC0415

        if self.panel_child is not None:  # compiling it in a child: read it back once done
            self.panel_child.wait()
            self.panel_child = None
        content, styles, blend = self.images
        key = (id(content), tuple(id(s) for s in styles), tuple(blend), self.program.objective,
               distances)  # fmt: skip
        cache = {} if cache is None else cache
        if key not in cache:
            cache[key] = panel_lib.Panel.for_objective(
                self.program.objective, self.vgg_params, content, styles, blend=blend,
                style_kinds=distances[0], content_kinds=distances[1],
            )  # fmt: skip
            from nstjax import aot  # noqa: PLC0415  (its programs are stored now)

            aot.mark_done(panel_lib.prebuild_key(self.program.objective, content, styles,
                                                 *distances))  # fmt: skip
        raw, normalized = cache[key](np.asarray(output_HxWx3, np.float32))
        return {"raw": raw, "normalized": normalized}

    def steps_beside_panel_child(self) -> bool:
        """Whether a cold run's steps may start while :meth:`prewarm_panel`'s child is
        still at work. Yes for a panel compiled for a short compile
        (:func:`nstjax.panel.fast_compiled`): what remains of its work by then is mostly
        its references' scoring (a cold 256 px run ~1 s shorter; all its processes 1,175
        -> 1,260 MiB). Not for larger ones: at 512x384 its child's level-1 programs ran
        14 s beside the steps, took 11 s from them and held 1.3 GiB while they did (all
        processes 1,856 -> 2,683 MiB, for 3 s)."""
        from nstjax import panel as panel_lib  # noqa: PLC0415

        return bool(self.images) and panel_lib.fast_compiled(self.images[0].shape[:2])

    def prewarm_panel(self) -> None:
        """Starts compiling :meth:`panel`'s programs in a child process
        (:mod:`nstjax.child`) unless they are stored; :meth:`panel` waits for it."""
        if self.panel_child is None:
            self.panel_child = start_panel_child(self.settings, self.program.objective,
                                                 self.vgg_params, self.images)  # fmt: skip

    def finish(self, image_HxWxC: np.ndarray) -> np.ndarray:
        """The optimized image as RGB pixels (luminance-only: recombined with the
        content's I and Q channels, Gatys et al. 2017 Sec. 5)."""
        if self.content_rgb is None:
            return image_HxWxC
        from nstjax import color  # noqa: PLC0415

        return color.recombine(np.asarray(image_HxWxC), self.content_rgb)

    def group_key(self) -> tuple:
        leaves, tree = jax.tree.flatten((self.init_1xHxWx3, self.run))
        shapes = tuple((np.shape(x), np.dtype(getattr(x, "dtype", None) or type(x)).name)
                       for x in leaves)  # fmt: skip
        return (self.program, self.weights_info.get("sha256"), str(tree), shapes)


def start_panel_child(settings: Settings, obj, vgg_params, images: tuple):
    """A compile child (:mod:`nstjax.child`) building the distance panel of ``images``
    (content, styles, blend: as loaded) into the store, or None: panel off, children
    off, or its programs stored already (:func:`nstjax.panel.prebuild_key`)."""
    distances = settings.panel_distances()
    if distances is None or not images:
        return None
    from nstjax import aot, child  # noqa: PLC0415
    from nstjax import panel as panel_lib  # noqa: PLC0415

    content, styles, blend = images
    k = panel_lib.prebuild_key(obj, content, styles, *distances)
    if k is None or aot.known(k) or not child.enabled():
        return None
    params = jax.tree.map(np.asarray, vgg_params)
    return child.Child(panel_lib.prebuild, obj, params, content, list(styles), blend,
                       *distances)  # fmt: skip


def objective_for(settings: Settings, preprocessing) -> tuple[objective.Objective, list]:
    """The static objective of ``settings`` and the term configs it came from."""
    defaults = {
        "content": settings.content_layers,
        "style": settings.style_layers,
        "image": (),
    }
    configs = settings.term_configs()
    names = terms.unique_names(configs)
    kept, ts = [], []
    for c, name in zip(configs, names, strict=True):
        kind = terms.get(c.kind)
        if kind.reads == "pixels":
            if c.layers:
                raise UsageError(f"loss term {c.kind!r} reads the image, not layers")
            layers = ()
        else:
            layers = c.layers if c.layers is not None else defaults[kind.role]
            if not layers:  # e.g. content_layers=() switches the content term off
                continue
        kept.append(c)
        ts.append(terms.Term(c.kind, name, tuple(layers), c.options, c.style, c.style_scale))
    obj = objective.Objective(
        tuple(ts),
        settings.pooling,
        preprocessing,
        settings.conv_impl,
        ceil_mode=ceil_mode(settings.pool_rounding, preprocessing),
        regions=len(settings.masks),
        mask_mode=settings.mask_mode,
    )
    return obj, kept


def ceil_mode(pool_rounding: str, preprocessing) -> bool:
    """``auto``: Caffe's ceil rounding for Caffe-derived weights (the network Gatys et al.
    ran: Caffe pools with ceil rounding), floor for the others (torchvision's VGG)."""
    if pool_rounding == "auto":
        return preprocessing == CAFFE
    return pool_rounding == "ceil"


def program_for(settings: Settings, obj, hw: tuple[int, int] | None = None) -> Program:
    """The static program of a run. Tiles only where the image (``hw``; None: not yet
    known, as when a sweep groups its variants) exceeds one tile."""
    tile = settings.tile if hw is None or max(hw) > settings.tile else 0
    if tile and hw is not None:
        from nstjax import tiles  # noqa: PLC0415

        tiles.supported(obj, tile)
    opt = OptimizerSpec(settings.optimizer, settings.memory_size, line_search=settings.line_search)
    return Program(obj, opt, settings.steps, settings.chunk_size, settings.save_every,
                   settings.loop, tile)  # fmt: skip


def check_size(obj: objective.Objective, hw: tuple[int, int], what: str, side: int) -> None:
    """Every layer the objective reads must have at least one position."""
    deepest = max(obj.layers, key=lambda name: vgg.LAYER_INDEX[name])
    fh, fw = objective.feature_hw(deepest, hw, obj.ceil_mode)
    if fh < 1 or fw < 1:
        need = 2 ** vgg.downsampling(deepest)
        raise UsageError(
            f"the {what} is {hw[1]}x{hw[0]} pixels (size {side}): too small for layer "
            f"{deepest}, which needs a short side of at least {need} pixels with floor "
            "pooling; use a larger --size or --pool-rounding ceil"
        )


def build_job(
    settings: Settings,
    content: ImageLike,
    styles: Sequence[ImageLike],
    weights: weights_api.Weights,
    images: ImageCache | None = None,
    caches: dict | None = None,
    tag: Any = None,
    masks: Sequence | None = None,
    style_masks: Sequence | None = None,
    init_image: np.ndarray | None = None,
    prewarm_panel: bool = False,
) -> Job:
    """Loads images, computes targets (once per distinct images and objective), the
    initial image and the loss weights. ``caches`` (a dict) shares work across jobs.
    ``masks`` / ``style_masks`` (HxW arrays) replace ``settings.masks`` /
    ``settings.style_masks`` (file names) for spatial control from Python.
    ``init_image`` (the optimized image of a coarser pyramid level, any size, 1 or 3
    channels) replaces ``settings.init``, resized to this level's size.
    ``prewarm_panel``: a cold distance panel starts compiling in a child process at once
    (:func:`start_panel_child`; single runs)."""
    check_init(settings)
    images = images or ImageCache()
    caches = {} if caches is None else caches
    styles = list(styles)
    blend = blend_weights(settings.style_blend, len(styles))
    content_img = images.get(content, settings.size)
    style_side = max(1, round(settings.size * settings.style_scale))
    style_imgs = [images.get(s, style_side) for s in styles]
    loaded = (content_img, list(style_imgs), list(blend))
    content_rgb = None
    if settings.preserve_color != "none":
        content_img, style_imgs, content_rgb = color_inputs(settings, content_img, style_imgs)
    obj, configs = objective_for(settings, weights.preprocessing)
    check_size(obj, content_img.shape[:2], "content image", settings.size)
    program = program_for(settings, obj, content_img.shape[:2])  # refuses before any work
    from nstjax import memory  # noqa: PLC0415

    scales = {1.0} | {obj.terms[i].style_scale for i in obj.role_terms("style")}  # terms'
    refs = [(max(1, round(s.shape[0] * k)), max(1, round(s.shape[1] * k)))  # own scale too
            for s in style_imgs for k in scales]  # fmt: skip
    estimate = memory.fit(settings, obj, content_img.shape[:2], content_rgb is not None, refs)
    obj = dataclasses.replace(obj, remat=settings.remat == "on")
    program = dataclasses.replace(program, objective=obj)
    for s_img in style_imgs:
        check_size(obj, s_img.shape[:2], "style image", style_side)
    region, style_region = region_masks(settings, content_img, style_imgs, masks, style_masks)
    if region is not None and len(region) != len(styles):
        raise UsageError(f"spatial control pairs style image r with mask r: got "
                         f"{len(styles)} style images and {len(region)} masks")  # fmt: skip
    cacheable = masks is None and style_masks is None
    cacheable = cacheable and not any(isinstance(x, np.ndarray) for x in (content, *styles))
    names = (str(content), tuple(str(s) for s in styles))
    weights_id = weights.info.get("sha256") or id(weights.params)  # targets depend on them
    tkey = (objective.one_off(obj), names, tuple(blend), settings.size, settings.style_scale,
            settings.masks, settings.style_masks, settings.preserve_color,
            settings.color_transfer, weights_id)  # fmt: skip
    # the layers the job keeps: its objective's and its panel's (the rest is freed)
    needed = obj.layers
    if settings.panel_distances() is not None:
        from nstjax import panel as panel_lib  # noqa: PLC0415

        needed = (*needed, *panel_lib.GATYS_LAYERS, *panel_lib.CONTENT_LAYERS)
    job_params = vgg.params_to(weights.params, needed)
    # a single run starts compiling its panel now, beside its own targets and kernels,
    # from the very params the job's panel will use: they key its stored programs and
    # reference distances (nstjax.panel_refs), so other params are a miss after the steps
    panel_child = None
    if prewarm_panel:
        panel_child = start_panel_child(settings, obj, job_params, loaded)
    targets = caches.get(("targets", tkey)) if cacheable else None
    if targets is None:
        targets = objective.targets(obj, weights.params, content_img, style_imgs, blend)
        if obj.regions:  # spatial control: guided style targets
            from nstjax import guided  # noqa: PLC0415

            guided_targets = guided.targets(
                obj, weights.params, content_img, style_imgs, region, style_region
            )
            for i, t in guided_targets.items():
                targets[i] = t
        if cacheable:
            caches[("targets", tkey)] = targets
    ikey = ("init", settings.init, settings.seed, settings.init_noise, names, tuple(blend),
            settings.size, settings.style_scale, settings.preserve_color)  # fmt: skip
    init = caches.get(ikey) if cacheable and init_image is None else None
    if init_image is not None:
        init = upsample(init_image, content_img.shape[:2])
    elif init is None:
        init = _initial_image(settings, content_img, style_imgs)
        if content_rgb is not None:  # luminance-only: optimize one channel
            grey = settings.init in ("content", "style", "noise")  # (Y, Y, Y) or noise
            init = init[..., :1] if grey else luma(init)  # a picture: the fast network's, a file
        if cacheable:
            caches[ikey] = init
    loss_weights = objective.make_weights(
        obj,
        settings.content_weight,
        settings.style_weight,
        settings.tv_weight,
        settings.content_layer_weights,
        settings.style_layer_weights,
        term_weights=[c.weight for c in configs],
        term_layer_weights=[c.layer_weights for c in configs],
        blend=blend,
    )
    run = {
        "targets": targets,
        "weights": loss_weights,
        "lr": np.float32(settings.resolved_lr),
        "ema": np.float32(settings.ema),
    }
    key = np.asarray(jax.random.PRNGKey(settings.seed), np.uint32)
    job = Job(
        program, init[None], run, key, settings, weights.info, job_params, tag,
        content_rgb, estimate, loaded,
    )  # fmt: skip
    job.panel_child = panel_child
    return job
