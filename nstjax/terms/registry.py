"""The registry of loss-term kinds, and term specs parsed from settings.

A **kind** is data plus small pure functions, registered by name with :func:`register`:

* ``role``: which image it compares against and which weight scales it —
  ``"content"`` (the content image; weight alpha), ``"style"`` (the style images;
  weight beta) or ``"image"`` (no reference; weight gamma, e.g. total variation);
* ``targets(feat_1xHxWxC, out_shape, **options) -> pytree``: turns one layer's features
  of the reference image into that layer's targets, once per run. ``out_shape`` is the
  output image's feature shape ``(H', W', C)`` at that layer (style images may differ
  in size from the output). ``None`` for kinds without a reference;
* ``loss(x, target, key, **options) -> (B,)``: scores one layer of the output batch
  ``x`` (features ``BxHxWxC``, or the pixels ``BxHxWx3`` for ``reads="pixels"``)
  against that layer's target; ``key`` is a PRNG key folded with the step, the term
  and the layer (stochastic kinds use it, others ignore it);
* ``options``: the kind's static options and their defaults (the allowed names; values
  are validated to the default's type);
* ``blend(targets_list, weights) -> targets`` (optional): merges the targets of several
  style images linearly (e.g. weighted Grams). Kinds without it score each style image
  separately and the engine blends the losses;
* ``masked_targets`` / ``masked_loss`` (optional): the same with per-position weights
  (a region mask at the layer's resolution), for spatial control: style image r is
  matched inside region r of the output. Kinds without them refuse masks;
* ``tile_stats`` / ``tile_loss`` (optional): the loss as a function of sums over
  positions, for tiled gradients of images that do not fit (:mod:`nstjax.tiles`).
  ``tile_stats(feat_BxHxWxC, target, weight_HxW, **o) -> pytree`` sums over the
  positions of one crop weighted by ``weight_HxW`` (1 on the positions the crop owns,
  0 elsewhere); with ``tile_target="positions"`` (content kinds) the target is the
  crop's part of a per-position target, with ``"whole"`` a whole target, which must not
  enter the sums. ``tile_loss(stats, target, hw, **o) -> (B,)`` is the loss from the
  sums over all crops (``hw``: the layer's full positions) and must equal ``loss`` on
  the whole image. Kinds without them refuse tiles.

A **term** is one use of a kind in an objective: its kind, layers, options (static:
they decide the compiled program) and its weight and per-layer weights (dynamic
numbers). Terms are written as strings, the same in the CLI, configs and the API::

    gram                                  # the kind with defaults
    gram:norm=chw                         # an option
    meanstd:weight=10,layers=relu1_1+relu2_1,layer_weights=0.7+0.3,name=bn

``weight``, ``layers``, ``layer_weights``, ``name``, ``style`` (a style term's targets
from that style image only, by index: scale control, Gatys et al. 2017 Sec. 6) and
``style_scale`` (that term's style image resized by this factor, e.g. a low-resolution
copy for coarse-scale statistics) are reserved; everything else is an option of the kind.
Unknown kinds and options fail loudly.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nstjax.errors import UsageError

ROLES = ("content", "style", "image")
RESERVED = ("weight", "layers", "layer_weights", "name", "style", "style_scale")


@dataclasses.dataclass(frozen=True)
class Kind:
    """A registered loss-term kind (see the module docstring)."""

    name: str
    role: str
    loss: Callable
    targets: Callable | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    blend: Callable | None = None
    reads: str = "features"  # or "pixels"
    stochastic: bool = False
    doc: str = ""
    check: Callable | None = None  # check(**options) raises UsageError on bad values
    # Spatial control (per-position weights; Gatys et al. 2017): optional.
    masked_targets: Callable | None = None  # (feat_1xHxWxC, mask_HxW, out_shape, **o)
    masked_loss: Callable | None = None  # (feat_BxHxWxC, target, mask_HxW, key, **o) -> (B,)
    # Tiled gradients (sums over positions; nstjax.tiles): optional.
    tile_stats: Callable | None = None  # (feat_BxHxWxC, target, weight_HxW, **o) -> sums
    tile_loss: Callable | None = None  # (stats, target, hw, **o) -> (B,)
    tile_target: str = "whole"  # or "positions": the target is cropped like the tile


KINDS: dict[str, Kind] = {}
"""name -> :class:`Kind`. Use :func:`register` to add, :func:`get` to look up,
:func:`registered` for all (the built-in kinds loaded)."""

BUILTIN_MODULES = ("gatys", "hist", "patches", "stats")
"""The modules of ``nstjax.terms`` that register the built-in kinds (they import JAX)."""
_builtins = {"state": "no"}  # "no", "loading" (by _builtins_lock's thread), "yes"
_builtins_lock = threading.RLock()


def load_builtins() -> None:
    """Registers the built-in kinds, on the first lookup (not at import), so that the
    settings schema, which checks term strings with this module, can be imported and a
    command parsed without JAX. Another thread waits until they are all registered; a
    failed import is raised again by the next lookup."""
    if _builtins["state"] == "yes":
        return
    with _builtins_lock:
        if _builtins["state"] != "no":  # done, or this thread's modules registering
            return
        _builtins["state"] = "loading"
        try:
            for name in BUILTIN_MODULES:
                importlib.import_module(f"nstjax.terms.{name}")
        except BaseException:
            _builtins["state"] = "no"
            raise
        _builtins["state"] = "yes"


def registered() -> dict[str, Kind]:
    """Every registered kind, the built-in ones included (:data:`KINDS`)."""
    load_builtins()
    return KINDS


def register(
    name: str,
    *,
    role: str,
    loss: Callable,
    targets: Callable | None = None,
    options: Mapping[str, Any] | None = None,
    blend: Callable | None = None,
    reads: str = "features",
    stochastic: bool = False,
    doc: str = "",
    check: Callable | None = None,
    masked_targets: Callable | None = None,
    masked_loss: Callable | None = None,
    tile_stats: Callable | None = None,
    tile_loss: Callable | None = None,
    tile_target: str = "whole",
    replace: bool = False,
) -> Kind:
    """Registers a loss-term kind under ``name``; returns it.

    Call it from your own code (e.g. at import of your module); the name is then usable
    everywhere a term is named: ``nstjax.stylize(..., style_loss=("name",))``, the CLI's
    ``--style-loss name`` and config sweeps. Re-registering a name raises unless
    ``replace=True`` (compiled programs are cached by name, so replace only before
    running anything with the old kind), or unless it is the same definition run again
    (the same source: a config file's module is executed twice); the first is kept.
    """
    if not name or not name.replace("_", "").isalnum():
        raise UsageError(f"term kind names are letters, digits and '_', got {name!r}")
    load_builtins()
    if role not in ROLES:
        raise UsageError(f"term kind {name!r}: role must be one of {ROLES}, got {role!r}")
    if reads not in ("features", "pixels"):
        raise UsageError(f"term kind {name!r}: reads must be 'features' or 'pixels'")
    if role != "image" and targets is None:
        raise UsageError(f"term kind {name!r} compares with the {role} image: give targets=")
    if (tile_stats is None) != (tile_loss is None) or tile_target not in ("whole", "positions"):
        raise UsageError(f"term kind {name!r}: give both tile_stats and tile_loss (or "
                         "neither); tile_target is 'whole' or 'positions'")  # fmt: skip
    if tile_stats is not None and (role == "image" or (tile_target == "positions"
                                                       and role != "content")):  # fmt: skip
        raise UsageError(f"term kind {name!r}: image kinds are not tiled (they read "
                         "pixels); tile_target 'positions' is for content kinds")  # fmt: skip
    options = dict(options or {})
    clash = sorted(set(options) & set(RESERVED))
    if clash:
        raise UsageError(f"term kind {name!r}: option names {clash} are reserved")
    kind = Kind(
        name, role, loss, targets, options, blend, reads, stochastic, doc, check,
        masked_targets, masked_loss, tile_stats, tile_loss, tile_target,
    )  # fmt: skip
    if name in KINDS and not replace:
        if _same_definition(KINDS[name], kind):  # the same source run again: kept
            return KINDS[name]
        raise UsageError(f"term kind {name!r} is already registered (pass replace=True)")
    KINDS[name] = kind
    return kind


def _same_definition(a: Kind, b: Kind) -> bool:
    """Whether two registrations are one definition executed twice: a config file that
    registers a kind is run by ml_collections and again for its ``sweep``, and a
    notebook may run a module again. Functions match by their code (file, line,
    bytecode, constants), defaults, closures and the globals they name (a changed
    constant or helper is another definition); methods by their object; partials by
    their parts; other callables only if they are the same object; the rest by ``==``.
    Anything that cannot be compared counts as different (the registration is refused)."""
    seen: dict = {}
    return all(
        _same(getattr(a, f.name), getattr(b, f.name), seen) for f in dataclasses.fields(Kind)
    )


def _same(x, y, seen: dict) -> bool:
    if x is y or (id(x), id(y)) in seen:  # the pair is being compared already (recursion)
        return True
    seen[id(x), id(y)] = (x, y)  # held: no id is reused while the comparison runs
    if isinstance(x, functools.partial) and isinstance(y, functools.partial):
        return (_same(x.func, y.func, seen) and _same(x.args, y.args, seen)
                and _same(x.keywords, y.keywords, seen))  # fmt: skip
    if inspect.ismethod(x) and inspect.ismethod(y):
        return x.__self__ is y.__self__ and _same(x.__func__, y.__func__, seen)
    if isinstance(x, types.FunctionType) and isinstance(y, types.FunctionType):
        return _same_function(x, y, seen)
    if callable(x) or callable(y) or isinstance(x, types.ModuleType):
        return False  # classes, instances with __call__, modules: the same object only
    if isinstance(x, (tuple, list)) and type(x) is type(y):
        return len(x) == len(y) and all(_same(i, j, seen) for i, j in zip(x, y, strict=True))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k], seen) for k in x)
    try:
        return type(x) is type(y) and bool(x == y)
    except Exception:  # noqa: BLE001  (an array's ambiguous ==)
        return False


def _same_function(f, g, seen: dict) -> bool:
    cf, cg = f.__code__, g.__code__
    if cf != cg or cf.co_filename != cg.co_filename:
        return False
    try:
        cells = [tuple(c.cell_contents for c in h.__closure__ or ()) for h in (f, g)]
    except ValueError:  # an empty cell
        return False
    missing = object()
    names = _global_names(cf)
    return (
        _same(f.__defaults__, g.__defaults__, seen)
        and _same(f.__kwdefaults__, g.__kwdefaults__, seen)
        and _same(cells[0], cells[1], seen)
        and all(
            _same(f.__globals__.get(n, missing), g.__globals__.get(n, missing), seen) for n in names
        )  # fmt: skip
    )


def _global_names(code) -> set[str]:
    """The names ``code`` and the code nested in it look up (globals and attributes)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def get(name: str) -> Kind:
    """The kind registered as ``name``; an unknown name is a UsageError listing the known."""
    load_builtins()
    try:
        return KINDS[name]
    except KeyError:
        raise UsageError(f"unknown loss term {name!r}; registered: {sorted(KINDS)}") from None


def kinds(role: str | None = None) -> tuple[str, ...]:
    return tuple(sorted(k for k, v in registered().items() if role is None or v.role == role))


@dataclasses.dataclass(frozen=True)
class Term:
    """One term of an objective: static and hashable (it decides the compiled program)."""

    kind: str
    name: str
    layers: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    style: int | None = None  # style terms: only this style image (by index)
    style_scale: float = 1.0  # style terms: the style image resized by this factor

    @property
    def role(self) -> str:
        return get(self.kind).role

    def option_dict(self) -> dict:
        return dict(self.options)


@dataclasses.dataclass(frozen=True)
class TermConfig:
    """A parsed term string: the static :class:`Term` fields plus its dynamic numbers."""

    kind: str
    options: tuple[tuple[str, Any], ...] = ()
    weight: float = 1.0
    layers: tuple[str, ...] | None = None  # None: the role's default layers
    layer_weights: tuple[float, ...] | None = None  # None: equal, summing to 1
    name: str | None = None
    style: int | None = None
    style_scale: float = 1.0


def _convert(kind: str, key: str, text: str, default):
    what = f"term {kind!r} option {key!r}"
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise UsageError(f"{what} needs a {type(default).__name__}, got {text!r}") from None
    return text


def parse(text: str, defaults: Mapping[str, Any] | None = None) -> TermConfig:
    """``"kind:key=value,..."`` -> :class:`TermConfig` (see the module docstring).

    ``defaults`` supplies option values that apply when the string does not set them
    (e.g. the legacy ``gram_norm`` setting for ``gram``), if the kind has that option.
    """
    if not isinstance(text, str):
        raise UsageError(f"a loss term is a string like 'gram:norm=chw', got {text!r}")
    kind_name, _, rest = text.strip().partition(":")
    kind = get(kind_name.strip())
    options = {k: v for k, v in (defaults or {}).items() if k in kind.options}
    weight, layers, layer_weights, name, style, style_scale = 1.0, None, None, None, None, 1.0
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise UsageError(f"loss term {text!r}: expected key=value, got {item!r}")
        if key == "weight":
            weight = _convert(kind.name, key, value, 1.0)
            if weight < 0:
                raise UsageError(f"loss term {text!r}: weight must be >= 0")
        elif key == "layers":
            layers = tuple(v for v in value.split("+") if v)
        elif key == "layer_weights":
            layer_weights = tuple(_convert(kind.name, key, v, 1.0) for v in value.split("+"))
        elif key == "name":
            name = value
        elif key == "style":
            style = _convert(kind.name, key, value, 0)
            if style < 0 or kind.role != "style":
                raise UsageError(f"loss term {text!r}: style= is a style image index >= 0")
        elif key == "style_scale":
            style_scale = _convert(kind.name, key, value, 1.0)
            if not style_scale > 0 or kind.role != "style":
                raise UsageError(f"loss term {text!r}: style_scale must be > 0 (style terms)")
        elif key in kind.options:
            options[key] = _convert(kind.name, key, value, kind.options[key])
        else:
            known = sorted([*kind.options, *RESERVED])
            raise UsageError(f"loss term {kind.name!r} has no option {key!r}; known: {known}")
    full = {**kind.options, **options}
    if kind.check is not None:
        kind.check(**full)
    return TermConfig(
        kind.name,
        tuple(sorted(full.items())),
        weight,
        layers,
        layer_weights,
        name,
        style,
        style_scale,
    )


def unique_names(configs: Sequence[TermConfig]) -> list[str]:
    """Metric names ``role/kind`` (or the given ``name``), made unique with ``#2``, ``#3``."""
    names, seen = [], {}
    for c in configs:
        role = get(c.kind).role
        base = c.name or (c.kind if role == "image" else f"{role}/{c.kind}")
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    if len(set(names)) != len(names):
        raise UsageError(f"loss term names must be unique, got {names}")
    return names
