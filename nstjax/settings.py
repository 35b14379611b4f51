"""The settings schema: one frozen dataclass, the single source of truth for a run.

Every field carries its help text, its value type and the methods that use it
(``metadata``); the CLI flags (:mod:`nstjax.flags`), the ``ml_collections`` base config
(:mod:`nstjax.configs`) and validation are generated from it. Which settings decide
the compiled program is *not* listed here: it follows from the static objective and
optimizer that :mod:`nstjax.build` derives from the settings.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

from nstjax import conv_policy, vgg_layers
from nstjax.errors import UsageError
from nstjax.optimizers import DEFAULT_LR, OPTIMIZERS
from nstjax.terms import registry as terms

GATYS_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
INITS = ("content", "noise", "style", "arbitrary")  # or a path to an image file
METHODS = ("gatys", "arbitrary")
LOOPS = ("auto", "device", "host")
BOTH, GATYS, ARBITRARY = METHODS, ("gatys",), ("arbitrary",)
PANEL_CONTENT_KINDS = ("mse", "selfsim")  # the panel's content distances with panel="on"


def _field(default, help: str, type: str, methods=GATYS, choices=None, flag=None):  # noqa: A002
    """A settings field. ``type``: int, float, str, opt_float, opt_str, names, floats
    (comma-separated, optional), terms or paths (repeatable strings). ``flag``: the
    command-line name if not ``--field-name``."""
    meta = {"help": help, "type": type, "methods": methods, "choices": choices, "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides a run. ``nstjax stylize --help`` lists the same fields."""

    method: str = _field("gatys", "gatys (optimization) or arbitrary (fast network)", "str",
                         BOTH, METHODS)  # fmt: skip
    size: int = _field(512, "long side of the output, pixels", "int", BOTH)
    style_scale: float = _field(1.0, "style image long side relative to size", "float")
    steps: int = _field(500, "optimization steps", "int")
    optimizer: str = _field("lbfgs", "lbfgs or adam", "str")
    lr: float | None = _field(None, "learning rate (default 1 for lbfgs, 10 for adam)",
                              "opt_float")  # fmt: skip
    scales: tuple[int, ...] = _field(
        (),
        "coarse-to-fine: long sides of a pyramid, e.g. 256,512 (overrides size); each "
        "scale starts from the previous result upsampled, with a fresh optimizer state",
        "ints",
    )
    scale_steps: tuple[int, ...] = _field(
        (), "steps per pyramid scale (default: steps at each)", "ints"
    )
    ema: float = _field(
        0.0,
        "iterate averaging: the output is an exponential moving average of the "
        "iterates with this decay (0: the last iterate)",
        "float",
    )
    memory_size: int = _field(100, "L-BFGS history length (memory: 2 x N images)", "int")
    remat: str = _field(
        "auto",
        "recompute VGG activations in the backward pass (~1 more forward per step): on, "
        "off, or auto (= off: on XLA:CPU it saved no memory; see the README's Memory)",
        "str",
        choices=("auto", "on", "off"),
    )
    tile: int = _field(
        0,
        "tiled gradients for images that do not fit: cores of N px (a multiple of 16) "
        "computed with a halo covering VGG's receptive field; exact (0: off; terms "
        "mse, gram, meanstd, tv)",
        "int",
    )
    line_search: int = _field(
        0,
        "L-BFGS: at most N zoom line-search evaluations per step (0: none, as "
        "neural-style; N>0 gives monotone decrease at up to N extra evaluations)",
        "int",
    )
    content_weight: float = _field(1.0, "alpha: weight of the content terms", "float")
    style_weight: float = _field(1e3, "beta: weight of the style terms", "float")
    tv_weight: float = _field(0.0, "gamma: weight of the image terms (TV)", "float")
    content_layers: tuple[str, ...] = _field(("conv4_2",), "default layers of content terms",
                                             "names")  # fmt: skip
    style_layers: tuple[str, ...] = _field(GATYS_STYLE_LAYERS, "default layers of style terms",
                                           "names")  # fmt: skip
    content_layer_weights: tuple[float, ...] | None = _field(
        None, "per content layer (default equal, summing to 1)", "floats"
    )
    style_layer_weights: tuple[float, ...] | None = _field(
        None, "per style layer (default equal, summing to 1)", "floats"
    )
    content_loss: tuple[str, ...] = _field(
        ("mse",), "content term, e.g. mse or KIND:weight=W,layers=a+b (repeat to add)", "terms"
    )
    style_loss: tuple[str, ...] = _field(
        ("gram",), "style term, e.g. gram:norm=chw,weight=2 (repeat to combine)", "terms"
    )
    image_loss: tuple[str, ...] = _field(("tv",), "image terms (weight tv_weight)", "terms")
    masks: tuple[str, ...] = _field(
        (),
        "spatial control: a region mask of the content (greyscale file, >= 128 inside; "
        "!PATH for its complement), one per style image, in order (repeat)",
        "paths",
        flag="--mask",
    )
    style_masks: tuple[str, ...] = _field(
        (),
        "spatial control: each style image's own region mask ('-': the whole image), "
        "in order (repeat)",
        "paths",
        flag="--style-mask",
    )
    mask_mode: str = _field(
        "inside",
        "how masks follow the network: inside (eroded) or mean (averaged)",
        "str",
        choices=("inside", "mean"),
    )
    preserve_color: str = _field(
        "none",
        "colour control (Gatys et al. 2017): none, luminance (luminance-only "
        "transfer) or histogram (the style recoloured to the content's colour statistics)",
        "str",
        choices=("none", "luminance", "histogram"),
    )
    color_transfer: str = _field(
        "cholesky",
        "histogram matching's square root: cholesky, sym or pca",
        "str",
        choices=("cholesky", "sym", "pca"),
    )
    style_blend: tuple[float, ...] | None = _field(
        None, "weights of the style images, e.g. 0.7,0.3", "floats", BOTH
    )
    pooling: str = _field("avg", "max or avg (the paper's)", "str", choices=vgg_layers.POOLINGS)
    pool_rounding: str = _field(
        "auto",
        "odd-sized maps: ceil (Caffe's, keeps the border), floor, or auto (ceil for "
        "Caffe-derived weights)",
        "str",
        choices=("auto", "ceil", "floor"),
    )
    gram_norm: str = _field("gatys", "default norm of gram terms: gatys, n, hw, chw", "str")
    init: str = _field("content", "content, noise, style, arbitrary or an image path", "str")
    init_noise: float = _field(64.0, "std of the noise init around mid-grey, pixels", "float")
    seed: int = _field(0, "PRNG seed (noise init, stochastic terms)", "int")
    save_every: int = _field(0, "save an intermediate image every N steps (0: never)", "int")
    chunk_size: int = _field(20, "steps per compiled chunk between returns to Python", "int")
    loop: str = _field("auto", "auto, device (fori_loop) or host (dispatch)", "str",
                       choices=LOOPS)  # fmt: skip
    conv_impl: str = _field(
        conv_policy.DEFAULT_IMPL,
        "convolution policy: auto (Winograd on every layer but the RGB one: F(4x4) on CPU, "
        "F(3x3) on deep layers of at most 16x16, F(2x2) on GPU; XLA's on TPU), "
        + ", ".join(k for k in conv_policy.CONV_IMPLS if k != "auto"),
        "str",
    )
    weights: str = _field("auto", "VGG19 weights: a source name or a file", "str")
    weights_format: str | None = _field(None, "format of a weights file", "opt_str")
    panel: str = _field(
        os.environ.get("NSTJAX_PANEL", "on"),
        "score the output under registered distances (metrics 'panel'; the sweep's "
        "panel.png): on (every style kind, mse and selfsim), off, or distances joined "
        "by + (e.g. gram+w2+mse); default from NSTJAX_PANEL, else on",
        "str",
    )
    style_strength: float = _field(1.0, "arbitrary: 0 (content's own style) .. 1", "float",
                                   ARBITRARY)  # fmt: skip

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check_type(f, getattr(self, f.name))
            value = getattr(self, f.name)
            if (
                f.metadata["type"] in ("names", "floats", "ints", "terms", "paths")
                and value is not None
            ):
                if isinstance(value, str):
                    value = (
                        (value,) if f.metadata["type"] in ("terms", "paths") else value.split(",")
                    )
                object.__setattr__(self, f.name, tuple(value))
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise UsageError(
                    f"unknown {f.name} {getattr(self, f.name)!r}; use one of {choices}"
                )
        vgg_layers.check_layers(self.content_layers, "content layer")
        vgg_layers.check_layers(self.style_layers, "style layer")
        conv_policy.check_impl(self.conv_impl)
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(
                f"unknown optimizer {self.optimizer!r}; use one of {sorted(OPTIMIZERS)}"
            )
        for name in ("size", "chunk_size", "memory_size"):
            _positive_int(name, getattr(self, name))
        if int(self.tile) != self.tile or self.tile < 0 or self.tile % 16:
            raise UsageError(f"tile must be 0 (off) or a multiple of 16 px, got {self.tile}")
        if self.tile and self.line_search:
            raise UsageError("tile and line_search do not combine (a line search "
                             "evaluates whole images)")  # fmt: skip
        if self.line_search and self.optimizer != "lbfgs":
            raise UsageError("line_search is for optimizer lbfgs")
        for name in ("steps", "save_every", "line_search"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 0:
                raise UsageError(f"{name} must be an integer >= 0, got {getattr(self, name)}")
        if int(self.seed) != self.seed:
            raise UsageError(f"seed must be an integer, got {self.seed}")
        for name in ("style_scale", "content_weight", "style_weight", "tv_weight", "init_noise"):
            _finite_nonneg(name, getattr(self, name))
        for name in ("content_layer_weights", "style_layer_weights", "style_blend"):
            for v in getattr(self, name) or ():
                _finite_nonneg(name, v)
        if not 0 <= self.ema < 1:
            raise UsageError(f"ema must be in [0, 1), got {self.ema}")
        for v in self.scales:
            _positive_int("scales", v)
        if self.scale_steps and len(self.scale_steps) != len(self.scales):
            raise UsageError(f"scale_steps has {len(self.scale_steps)} values for "
                             f"{len(self.scales)} scales")  # fmt: skip
        for v in self.scale_steps:
            if int(v) != v or v < 0:
                raise UsageError(f"scale_steps must be integers >= 0, got {self.scale_steps}")
        if self.style_scale == 0:
            raise UsageError("style_scale must be > 0")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.style_strength) and 0 <= self.style_strength <= 1):
            raise UsageError(f"--style-strength must be in [0, 1], got {self.style_strength}")
        if self._uses_terms():
            self.term_configs()  # validates every term string
            self.panel_distances()

    def _uses_terms(self) -> bool:
        """Whether the term strings (losses, panel) need checking against the registry:
        always for a method that uses them, else only where they were set (the defaults
        are valid), so a fast-network command is parsed without loading the built-in
        kinds (JAX)."""
        fields = [f for f in dataclasses.fields(self) if f.metadata["type"] == "terms"]
        fields += [f for f in dataclasses.fields(self) if f.name in ("gram_norm", "panel")]
        return any(
            self.method in f.metadata["methods"] or getattr(self, f.name) != f.default
            for f in fields
        )

    @property
    def resolved_lr(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)

    def panel_distances(self) -> tuple[tuple[str, ...] | None, tuple[str, ...]] | None:
        """The distance panel's ``(style_kinds, content_kinds)`` (``nstjax.panel.Panel``'s
        arguments; ``style_kinds=None``: every registered style kind), or None for
        ``panel="off"``. A list keeps its order; each entry is a kind or a term string
        without layers or weights (``mmd_rbf:bandwidth=2``)."""
        if self.panel == "off":
            return None
        if self.panel == "on":
            return None, PANEL_CONTENT_KINDS
        by_role: dict[str, list[str]] = {"style": [], "content": []}
        for text in (t.strip() for t in self.panel.split("+")):
            try:
                c = terms.parse(text) if text else None
            except UsageError as e:
                raise UsageError(f"panel: {e}") from None
            role = terms.get(c.kind).role if c else None
            if role not in by_role:
                raise UsageError(
                    f"panel: {text!r} is not a style or content distance; use on, off or "
                    f"kinds joined by + from {list(terms.kinds('style') + terms.kinds('content'))}"
                )
            if c.layers is not None or c.layer_weights is not None or c.weight != 1.0:
                raise UsageError(f"panel distance {text!r}: layers and weights are the panel's")
            by_role[role].append(text)
        return tuple(by_role["style"]), tuple(by_role["content"])

    def term_configs(self) -> list[terms.TermConfig]:
        """The objective's terms, parsed: content, then style, then image terms."""
        out = []
        for role, field in (("content", "content_loss"), ("style", "style_loss"),
                            ("image", "image_loss")):  # fmt: skip
            for text in getattr(self, field):
                c = terms.parse(text, {"norm": self.gram_norm})
                if terms.get(c.kind).role != role:
                    raise UsageError(
                        f"{field} got {c.kind!r}, a {terms.get(c.kind).role} term; "
                        f"{role} terms are {list(terms.kinds(role))}"
                    )
                if c.layers is not None:
                    vgg_layers.check_layers(c.layers, f"{c.kind} layer")
                for v in c.layer_weights or ():
                    _finite_nonneg(f"{c.kind} layer_weights", v)
                out.append(c)
        terms.unique_names(out)
        return out

    def levels(self) -> list[Settings]:
        """The pyramid's per-scale settings (one level without ``scales``)."""
        if not self.scales:
            return [self]
        steps = self.scale_steps or (self.steps,) * len(self.scales)
        return [
            self.replace(size=int(size), steps=int(n), scales=(), scale_steps=())
            for size, n in zip(self.scales, steps, strict=True)
        ]

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr"] = self.resolved_lr
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> Settings:
        """From a dict or ConfigDict; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - fields)
        if unknown:
            raise UsageError(f"unknown settings {unknown}; known: {sorted(fields)}")
        return cls(**{k: _plain(v) for k, v in mapping.items()})


def fields() -> tuple[dataclasses.Field, ...]:
    """The schema: every settings field with its metadata (help, type, methods)."""
    return dataclasses.fields(Settings)


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "opt_float": (int, float),
          "opt_str": (str,)}  # fmt: skip


def _check_type(f: dataclasses.Field, value) -> None:
    """A value of the field's type (numpy scalars count as numbers), else a UsageError."""
    kind = f.metadata["type"]
    if value is None and kind.startswith("opt_") or value is None and kind == "floats":
        return
    if kind in _TYPES:
        ok = isinstance(value, _TYPES[kind]) and not isinstance(value, bool)
        if not ok and kind != "str" and type(value).__module__ == "numpy":
            ok = kind != "int" or float(value) == int(value)
        if not ok:
            raise UsageError(f"{f.name} must be {kind.removeprefix('opt_')}, got {value!r}")
        return
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (tuple, list)):
        raise UsageError(f"{f.name} must be a list, got {value!r}")
    want = {"floats": (int, float), "ints": (int,)}.get(kind, (str,))
    if kind == "floats" and value is None:
        return
    if any(isinstance(v, bool) or not isinstance(v, want) for v in items):
        raise UsageError(f"{f.name} must be a list of {want[-1].__name__}s, got {value!r}")


def _plain(value):
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, Sequence):
        return tuple(value)
    return value


def _positive_int(name: str, value) -> None:
    if int(value) != value or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value}")


def _finite_nonneg(name: str, value) -> None:
    try:
        ok = math.isfinite(float(value)) and float(value) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"{name} must be finite and >= 0, got {value!r}")


def blend_weights(blend: Sequence[float] | None, n_styles: int) -> list[float]:
    """Normalized style blend weights (equal if None)."""
    if n_styles < 1:
        raise UsageError("need at least one style image")
    if blend is None:
        return [1.0 / n_styles] * n_styles
    if len(blend) != n_styles:
        raise UsageError(f"--style-blend has {len(blend)} weights for {n_styles} style images")
    if any(not math.isfinite(w) or w < 0 for w in blend) or sum(blend) <= 0:
        raise UsageError(f"style blend weights must be >= 0 and not all 0, got {list(blend)}")
    total = float(sum(blend))
    return [float(w) / total for w in blend]
