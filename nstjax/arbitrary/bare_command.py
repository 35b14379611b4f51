"""A warm fast-network command without JAX: ``nstjax stylize --method arbitrary``.

The fast network is two programs: the style predictor (one call per style image) and
the transformer. :mod:`nstjax.arbitrary.batch` runs them through JAX and keeps each as
a bare record (:mod:`nstjax.bare`) under the names below. When the records of a
command's shapes are there, :func:`stylize` runs the same executables on the same
arrays with jaxlib's runtime alone (bit for bit the JAX path's image, tested), and the
command never imports JAX: on the 2-core AVX2 EPYC the warm 384 px command went from
1.1-1.2 s to about 0.5 s (``benchmarks/arbitrary_command.py``). Otherwise it returns None
and the command takes the JAX path, which writes the records for the next run.

What both paths share is here (no JAX): the arrays the programs are called with, the
blend of style vectors and the metrics.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np

from nstjax import atomic, bare, image, memory
from nstjax.arbitrary import weights as arbitrary_weights
from nstjax.settings import Settings, blend_weights
from nstjax.weights import cache

STYLE_VECTOR = "nstjax.arbitrary.style_vector"
"""The style predictor's bare name: ``(params, style_1xHxWx3)`` -> a ``1 x 100`` vector."""
TRANSFER = "nstjax.arbitrary.transfer"
"""The transformer's: ``(params, contents_BxHxWx3, vecs_Bx100, strengths_B)``, static
``own_style`` (some strength is not 1: the contents' own vectors are blended in)."""


def style_input(style_HxWx3: np.ndarray) -> np.ndarray:
    """A style image as the predictor takes it: ``1 x H x W x 3`` in [0, 1]."""
    return np.asarray(style_HxWx3, np.float32)[None] / 255.0


def content_input(contents: Sequence[np.ndarray]) -> np.ndarray:
    """Content images as the transformer takes them: ``B x H x W x 3`` in [0, 1]."""
    return np.stack(contents).astype(np.float32) / 255.0


def blend(vecs_Sx100: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """One run's style vector: its style images' vectors, blended."""
    return np.asarray(weights, np.float32) @ np.stack(vecs_Sx100)


def metrics(settings: Settings, height: int, width: int, strength: float, weights, seconds,
            batch: int, backend: str) -> dict:  # fmt: skip
    """One run's metrics (``weights``: its blend)."""
    return {
        "method": "arbitrary",
        "status": "done",
        "height": int(height),
        "width": int(width),
        "style_strength": strength,
        "style_blend": list(weights),
        "batch_seconds": seconds,
        "batch_size": batch,
        "settings": settings.as_dict(),
        "weights": {
            "source": arbitrary_weights.NAME,
            "sha256": (cache.lookup(arbitrary_weights.NAME) or {}).get("npz_sha256"),
        },
        "backend": backend,
    }


class _Background:
    """``fn(*args)`` on a thread; :meth:`result` waits and returns it (or raises)."""

    def __init__(self, fn, *args):
        self._out: list = []
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn, *args):
        try:
            self._out.append((True, fn(*args)))
        except BaseException as e:  # noqa: BLE001  (raised again in the caller's thread)
            self._out.append((False, e))

    def wait(self) -> None:
        self._thread.join()

    def result(self):
        self._thread.join()
        ok, value = self._out[0]
        if not ok:
            raise value
        return value


def stylize(
    settings: Settings,
    content: str | os.PathLike,
    styles: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    metrics_path: str | os.PathLike | None = None,
) -> dict | None:
    """Stylizes and writes ``output`` (and the metrics JSON) as ``nstjax.stylize`` does,
    without JAX; returns the metrics, or None when this process cannot (JAX already
    imported, records off or missing, weights not fetched, ``NSTJAX_BARE=0``). Errors in
    the input (paths, images) are the JAX path's own, from the same functions."""
    t0 = time.perf_counter()
    if (
        "jax" in sys.modules
        or bare.directory() is None
        or cache.lookup(arbitrary_weights.NAME) is None
    ):
        return None
    out_path = image.check_output(output)
    json_path = atomic.check_writable(metrics_path) if metrics_path is not None else None
    weights = blend_weights(settings.style_blend, len(styles))
    strength = float(settings.style_strength)
    threads: list[_Background] = []
    try:
        return _stylize(settings, content, styles, out_path, json_path, weights, strength,
                        threads, t0)  # fmt: skip
    finally:
        for thread in threads:  # they use and patch jaxlib: done before this returns (the
            thread.wait()  # JAX path may import JAX next) or the process exits


def _stylize(settings, content, styles, out_path, json_path, weights, strength, threads, t0):
    threads.append(_Background(bare.Runtime))  # jaxlib's import and its client, meanwhile
    runtime = threads[0]
    try:
        params, _ = cache.load(arbitrary_weights.NAME)
    except Exception:  # noqa: BLE001  (damaged: the JAX path says so, or fetches)
        return None
    style_args = [bare.flatten((params, style_input(image.load(s)))) for s in styles]
    keys = [bare.key(STYLE_VECTOR, (), a) for a in style_args]
    try:
        records = [bare.read(k) for k in keys]
    except bare.BareError:  # not written yet (or damaged, and deleted)
        return None
    # the style predictor's executables are decoded while the content image is (jaxlib
    # and PIL release the GIL), the transformer's after it
    threads.append(_Background(lambda: [runtime.result().load(r) for r in records]))
    content_HxWx3 = image.load(content, long_side=settings.size)
    memory.fit_arbitrary(content_HxWx3.shape[:2])  # refused as the JAX path refuses it
    contents = content_input([content_HxWx3])
    strengths = np.asarray([strength], np.float32)
    own_style = bool(np.any(strengths != 1.0))  # as batch.run_group decides it
    vec_shape = np.zeros((1, 100), np.float32)  # the transformer's key: shapes only
    transfer_args = bare.flatten((params, contents, vec_shape, strengths))
    keys.append(bare.key(TRANSFER, (own_style,), transfer_args))
    try:
        record = bare.read(keys[-1])
    except bare.BareError:
        return None
    t1 = time.perf_counter()
    try:
        rt = runtime.result()
    except bare.BareError:  # no runtime here (another jaxlib): the records stay
        return None
    try:
        transfer = rt.load(record)
        vecs = [rt.call(*p, a)[0][0] for p, a in zip(threads[-1].result(), style_args, strict=True)]
        transfer_args["2"] = blend(vecs, weights)[None]
        out = rt.call(*transfer, transfer_args)[0]
    except bare.BareError:
        for k in keys:  # records that do not load or run: the JAX path writes them again
            bare.discard(k)
        return None
    programs = len(styles) + 1
    out_HxWx3 = out[0] * 255.0
    seconds = time.perf_counter() - t1
    image.save(out_path, image.to_uint8(out_HxWx3))
    h, w = content_HxWx3.shape[:2]
    m = metrics(settings, h, w, strength, weights, seconds, 1, "cpu")
    m["seconds_with_compile"] = seconds
    m["seconds"] = time.perf_counter() - t0
    m["compiles"] = {"compiled": 0, "cache_hits": 0, "whole_executables": 0, "children": 0,
                     "children_failed": 0, "seconds": 0.0, "bare": programs}  # fmt: skip
    if json_path is not None:
        atomic.write_json(json_path, m)  # as the JAX path's JsonWriter.write_summary
    return m
