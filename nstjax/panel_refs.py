"""The distance panel's reference distances, kept on disk between runs.

Besides each output, a :class:`nstjax.panel.Panel` scores two reference images: the
content image (the style distances' scale) and the style image(s) resized to the
content's size (the content distances' scale). They depend only on the inputs, so they
are kept in ``<compile cache>/nstjax-panel/<key>.json`` and a later run of the same
images reads them back instead of scoring them again: one VGG forward and two scorings
of every distance less per run.

The key is a SHA-256 of :func:`nstjax.aot.environment` (package source, versions, CPU,
``XLA_FLAGS``: what decides the compiled programs, hence the float32 rounding), the
panel's spec and seed, the blend, and the bytes and shapes of the content image, the
style images and every VGG parameter. Like the executable store, it is off with
``NSTJAX_COMPILE_CACHE=0`` or ``NSTJAX_AOT=0``, for loss kinds registered from user code
and for several processes; ``nstjax cache clear`` removes it. A file is plain JSON: one
that does not parse, or holds anything but numbers under string keys, is ignored (and
rewritten); files are written atomically.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from nstjax import aot, atomic
from nstjax.weights import cache

SUBDIR = "nstjax-panel"
ROLES = ("photo", "painting")
MAX_BYTES = 1 << 20


def directory(environ=os.environ) -> Path | None:
    """Where reference distances are kept, or None when the store is off."""
    if aot.directory(environ) is None:
        return None
    return cache.compile_cache_dir(environ) / SUBDIR


def _update(h, x) -> None:
    a = np.ascontiguousarray(np.asarray(x))
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(a.data)


def key(spec, params, content, styles: Sequence, blend, seed: int) -> str | None:
    """The key of one panel's references, or None when they cannot be kept."""
    if directory() is None or not aot.keyable():
        return None
    h = hashlib.sha256("\x00".join([*aot.environment(), repr(spec), repr(int(seed))]).encode())
    for x in (blend, content, *styles):
        _update(h, x)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        _update(h, leaf)
    return h.hexdigest()


def _valid(d) -> dict[str, float]:
    """The entries that are distances: finite numbers >= 0 (0: the photo's distance to
    itself); the rest is scored again."""
    if not isinstance(d, dict):
        return {}
    out = {}
    for k, v in d.items():
        if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                x = float(v)
            except OverflowError:  # an integer literal of 400 digits
                continue
            if math.isfinite(x) and x >= 0:
                out[k] = x
    return out


def load(k: str | None) -> dict[str, dict[str, float]]:
    """``{"photo": {distance: value}, "painting": {...}}`` kept under ``k`` (empty
    dicts where nothing valid is kept)."""
    out = {role: {} for role in ROLES}
    if k is None:
        return out
    path = directory() / f"{k}.json"
    try:
        data = atomic.read_json(path, max_bytes=MAX_BYTES)
    except (OSError, ValueError):
        return out
    if isinstance(data, dict):
        out = {role: _valid(data.get(role)) for role in ROLES}
    return out


def store(k: str | None, refs: Mapping[str, Mapping[str, float]]) -> None:
    """Keeps ``refs`` under ``k`` (best effort: a full or read-only disk only costs the
    next run the scoring)."""
    if k is None:
        return
    data = {role: {n: float(v) for n, v in refs[role].items()} for role in ROLES}
    if any(not math.isfinite(v) for r in data.values() for v in r.values()):
        return  # JSON has no NaN; such a panel is scored again next time
    path = directory() / f"{k}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic.write_json(path, data)
    except OSError:
        pass
