"""Single runs: ``stylize(content, styles, ...) -> (image, metrics)``, either method.

A Gatys run is a group of one through the same engine that sweeps use
(:mod:`nstjax.build` makes the job, :mod:`nstjax.engine` runs it); metrics go through
the writers of :mod:`nstjax.writers`. ``method="arbitrary"`` runs the fast network
(:mod:`nstjax.arbitrary.batch`) with the same image I/O, writers and errors.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nstjax import atomic, build, engine, image, malloc, monitor, writers
from nstjax.build import Job
from nstjax.errors import NstError, UsageError
from nstjax.inputs import ImageLike
from nstjax.optim import resolve_loop
from nstjax.settings import Settings
from nstjax.weights import api as weights_api

LOSS_KEYS = ("loss", "content_loss", "style_loss", "tv_loss")


def prepare(
    settings: Settings,
    content: ImageLike,
    styles: Sequence[ImageLike],
    weights: weights_api.Weights | None = None,
) -> Job:
    """Loads images and weights and computes the targets (once): a job of one."""
    if weights is None:
        weights = weights_api.load(settings.weights, settings.weights_format)
    return build.build_job(settings, content, list(styles), weights, prewarm_panel=True)


def optimize(
    job: Job,
    on_chunk: Callable[[int, np.ndarray, dict], None] | None = None,
    writer: writers.MetricWriter | None = None,
):
    """Runs the optimization of one job. Returns (final float image HxWx3, metrics).

    ``on_chunk(step, records_KxN, state)`` is called after every chunk; ``writer``
    receives the records as they come. A non-finite loss raises :class:`NstError`.
    """
    keys = job.program.objective.record_keys

    def chunk(jobs, step, rec_RxKxN, state):
        if writer is not None:
            writer.write_steps(step - rec_RxKxN.shape[2], keys, rec_RxKxN[0])
        if on_chunk is not None:
            on_chunk(step, rec_RxKxN[0], state)

    outcome = next(engine.run_group([job], 1, chunk, stop_on_nonfinite=True))
    malloc.trim()  # the steps' buffers are gone: their heap goes back before the panel
    if outcome.error:
        raise NstError(f"{outcome.error}; try a smaller --lr")
    m = engine.metrics(outcome)
    m["loop"] = resolve_loop(job.program.loop)
    out = job.finish(outcome.image_HxWx3)
    m["panel"] = job.panel(_written(out))
    return out, m


def _written(image_HxWx3: np.ndarray) -> np.ndarray:
    """The image as it is saved (8-bit), as float pixels."""
    return image.to_uint8(image_HxWx3).astype(np.float32)


def intermediate_path(output: Path, step: int) -> Path:
    return output.with_name(f"{output.stem}_{step:05d}{output.suffix}")


def stylize(
    content: ImageLike,
    styles: ImageLike | Sequence[ImageLike],
    *,
    output: str | os.PathLike | None = None,
    metrics: str | os.PathLike | None = None,
    metrics_csv: str | os.PathLike | None = None,
    tensorboard: str | os.PathLike | None = None,
    progress: bool = False,
    weights: weights_api.Weights | None = None,
    settings: Settings | None = None,
    writer: writers.MetricWriter | None = None,
    **overrides,
):
    """Style transfer of one content image. Returns (uint8 HxWx3 image, metrics dict).

    Args:
      content: the content image (path or float HxWx3 array in [0, 255]).
      styles: one or several style images (paths or arrays).
      output: where to write the image (atomically); intermediate images go beside it.
      metrics: metrics JSON, rewritten (atomically) after every chunk, final at the end.
      metrics_csv: per-step records as CSV, written live.
      tensorboard: a TensorBoard log directory, written live.
      progress: show a progress bar with the losses.
      weights: preloaded VGG19 weights (else ``settings.weights`` is loaded).
      settings: a :class:`Settings`; keyword ``overrides`` replace its fields (e.g.
        ``style_loss=("gram", "mykind:weight=10")``, ``method="arbitrary"``).
      writer: an extra :class:`~nstjax.writers.MetricWriter` of your own.
    """
    t_start = time.perf_counter()
    settings = settings or Settings()
    if overrides:
        settings = settings.replace(**overrides)
    if isinstance(styles, (str, os.PathLike, np.ndarray)):
        styles = [styles]
    styles = list(styles)
    out_path = image.check_output(output) if output is not None else None
    metrics_path = atomic.check_writable(metrics) if metrics is not None else None
    csv_path = atomic.check_writable(metrics_csv) if metrics_csv is not None else None
    if settings.save_every and out_path is None:
        raise UsageError("--save-every needs --output")
    if tensorboard is not None:
        writers.require_tensorboard()
    if settings.method == "gatys" and weights is None:
        weights = weights_api.load(settings.weights, settings.weights_format)
    pyramid_run = settings.method == "gatys" and bool(settings.scales)
    with monitor.count_compiles() as compiles:
        job = None
        if settings.method == "gatys" and not pyramid_run:
            job = prepare(settings, content, styles, weights)
            # the job holds the layers it needs (vgg.params_to): the rest (conv5_2..conv5_4
            # for the Gatys layers, 27 MiB) is freed before the steps fill the heap
            weights = None
        w = writers.MultiWriter(
            [
                writers.ProgressWriter(settings.steps)
                if progress and job and settings.steps
                else None,
                writers.JsonWriter(metrics_path) if metrics_path else None,
                writers.CsvWriter(csv_path) if csv_path else None,
                writers.TensorBoardWriter(tensorboard) if tensorboard else None,
                writer,
            ]
        )
        try:
            if pyramid_run:
                out_f, m = _pyramid(settings, content, styles, weights, out_path, w)
            elif job is None:
                from nstjax.arbitrary import batch as arbitrary_batch  # noqa: PLC0415

                out_f, m = arbitrary_batch.stylize_one(settings, content, styles)
            else:
                out_f, m = optimize(job, _saver(job, out_path), w)
            out = image.to_uint8(out_f)
            if out_path is not None:
                image.save(out_path, out)
            m["seconds"] = time.perf_counter() - t_start
            m["compiles"] = {  # every program of the run: compiled, or from the cache
                "compiled": compiles.count,
                "cache_hits": compiles.cache_hits,
                "whole_executables": compiles.aot_hits,  # of the hits: not even traced
                "children": compiles.children,  # cold programs compiled in child processes
                "children_failed": compiles.children_failed,
                "seconds": compiles.seconds,
            }
            w.write_summary(m)
        finally:
            w.close()
    return out, m


def _pyramid(settings: Settings, content, styles, weights, out_path, writer):
    """A coarse-to-fine run (:mod:`nstjax.pyramid`); records and saves continue across
    levels (intermediate images are named by the global step)."""
    from nstjax import pyramid  # noqa: PLC0415

    offsets = np.cumsum([0] + [level.steps for level in settings.levels()])

    def on_chunk(job, level, step, rec_KxN, state):
        at = int(offsets[level]) + step
        writer.write_steps(at - rec_KxN.shape[1], job.program.objective.record_keys, rec_KxN)
        every = settings.save_every
        if every and out_path is not None and at % every == 0 and at < offsets[-1]:
            img = job.finish(np.asarray(state["avg"][0, 0]))
            image.save(intermediate_path(out_path, at), img)

    outcome, m = pyramid.run(settings, content, styles, weights, on_chunk)
    malloc.trim()  # as optimize: the last level's heap goes back before the panel
    m["loop"] = resolve_loop(settings.loop)
    out = outcome.job.finish(outcome.image_HxWx3)
    m["panel"] = outcome.job.panel(_written(out))
    return out, m


def _saver(job: Job, out_path: Path | None):
    """Saves intermediate images every ``settings.save_every`` steps."""
    settings = job.settings

    def on_chunk(step, rec, state):
        every = settings.save_every
        if every and step % every == 0 and step < settings.steps:
            img = job.finish(np.asarray(state["avg"][0, 0]))
            image.save(intermediate_path(out_path, step), img)

    return on_chunk
