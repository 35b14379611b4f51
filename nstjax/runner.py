"""Runs a config's sweep into a workdir: batched groups, resumable, with reports."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from nstjax import atomic, build, engine, image, inputs, monitor, sweep, writers
from nstjax.arbitrary import batch as arbitrary_batch
from nstjax.claims import STALE_AFTER, Claims
from nstjax.errors import NstError, UsageError
from nstjax.objective import RECORD_KEYS as LOSS_KEYS
from nstjax.settings import INITS
from nstjax.weights import api as weights_api
from nstjax.weights import cache


def _variant_metrics(v: sweep.Variant, m: dict, group: int) -> dict:
    m = dict(m)
    m["seconds"] = m["batch_seconds"] / max(1, m["batch_size"])  # the batch's wall, shared
    m.update(
        {
            "overrides": sweep._jsonable(v.overrides),
            "content": v.content,
            "styles": list(v.styles),
            "group": group,
        }
    )
    return m


def _write_variant(workdir: Path, v: sweep.Variant, image_HxWx3, m: dict) -> dict:
    d = sweep.variant_dir(workdir, v)
    d.mkdir(parents=True, exist_ok=True)
    if image_HxWx3 is not None:
        image.save(d / "image.png", image_HxWx3)
    atomic.write_json(d / "config.json", v.record())
    atomic.write_json(d / "metrics.json", m)  # last: its presence means "finished"
    return m


def _row(v: sweep.Variant, m: dict) -> dict:
    final = m.get("final") or {}
    return {
        "name": v.name,
        "swept": sweep._jsonable(v.overrides),
        "status": m["status"],
        "error": m.get("error"),
        "final_loss": final.get("loss"),
        "final_content_loss": final.get("content_loss"),
        "final_style_loss": final.get("style_loss"),
        "final_tv_loss": final.get("tv_loss"),
        "seconds": m.get("seconds"),
        "steps": m.get("steps"),
        "group": m.get("group"),
        **{f"panel/{k}": v for k, v in ((m.get("panel") or {}).get("normalized") or {}).items()},
    }


def _check_report_entry(row: dict, history: dict | None) -> None:
    """Raises ValueError unless a report row and its loss history hold what the reports
    read: numbers (or None) where they plot and tabulate numbers."""

    def number(x) -> bool:
        return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))

    if not isinstance(row["status"], str):
        raise ValueError("status is not a string")
    bad = [k for k, x in row.items() if k.startswith(("final_", "panel/")) and not number(x)]
    if bad or not number(row["seconds"]) or not number(row["steps"]):
        raise ValueError(f"not a number: {', '.join(bad) or 'seconds or steps'}")
    for k, values in (history or {}).items():
        if not isinstance(values, list) or not all(number(x) for x in values):
            raise ValueError(f"{k} is not a list of numbers")


def run(
    config,
    workdir: str | Path,
    sweep_fn=None,
    arg: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Runs every unfinished variant of ``config``'s sweep into ``workdir``.

    Returns a summary: counts of variants run/skipped/failed, groups, compiles, seconds.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    if config.get("distributed", False):
        _initialize_distributed()
    if int(config.batch_size) < 1:
        raise UsageError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.get("tensorboard", False):
        writers.require_tensorboard()  # before hours of work, not after
    variants = sweep.expand(config, sweep_fn, arg)
    writer = jax.process_index() == 0
    try:  # once the sweep is known to be good
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the workdir {str(workdir)!r}: {e.strerror}") from None
    claims = Claims(workdir, float(config.get("claim_timeout", STALE_AFTER)))
    fp = sweep.fingerprint(config, variants, _pins(variants))
    sweep.prepare_workdir(workdir, fp, overwrite, writer, claims.live_others())
    claims.reap()  # a killed runner's claims, finished variants' included
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices("nstjax: workdir ready")
    mine = sweep.mine(variants, jax.process_index(), jax.process_count())
    todo = [v for v in mine if not sweep.is_done(workdir, v)]
    jobs = _build_jobs(todo)
    groups = engine.group(jobs)

    def claim(job) -> bool:  # before a job joins a batch: is it still ours to run?
        v = job.tag
        if not claims.try_claim(v.name):
            return False
        if sweep.is_done(workdir, v):  # another runner finished it meanwhile
            claims.release(v.name)
            return False
        sweep.remove_temporaries(workdir, v)
        where = sweep.variant_dir(workdir, v)
        try:  # where its results go, before it runs
            where.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            claims.release(v.name)
            raise NstError(f"cannot write variant {v.name} into {str(where)!r}: "
                           f"{e.strerror}") from None  # fmt: skip
        return True

    total = sum(v.settings.steps for v in todo if v.settings.method == "gatys")
    bar = writers.ProgressWriter(total, "sweep") if progress and total else None
    failed = programs = ran = 0
    batch_size = int(config.batch_size)
    live: dict = {}  # per-variant live writers, opened at a variant's first chunk
    panels: dict = {}  # distance panels, one per content/styles/objective
    arbitrary_params = None  # the fast network's, at its first group
    with monitor.count_compiles() as compiles:
        try:
            for gi, group in enumerate(groups):
                if isinstance(group[0], _PyramidVariant):
                    if claim(group[0]):
                        m = _run_pyramid(workdir, group[0], config, gi, bar, claims)
                        claims.release(group[0].tag.name)
                        failed += m["status"] == "failed"
                        ran += 1
                    continue
                if isinstance(group[0], arbitrary_batch.ArbitraryJob):
                    mine_now = [j for j in group if claim(j)]
                    n = min(batch_size, len(mine_now))
                    if arbitrary_params is None:  # read and committed once per sweep
                        arbitrary_params = arbitrary_batch.load_params()
                    for job, out, seconds in arbitrary_batch.run_group(
                        mine_now, batch_size, arbitrary_params
                    ):
                        m = arbitrary_batch.metrics(job, seconds, n)
                        _write_variant(workdir, job.tag, out, _variant_metrics(job.tag, m, gi))
                        claims.release(job.tag.name)
                        ran += 1
                    continue
                on_chunk = _on_chunk(workdir, live, bar, claims, config)
                for outcome in engine.run_group(group, batch_size, on_chunk=on_chunk, claim=claim):
                    v = outcome.job.tag
                    if v.name in live:
                        live.pop(v.name).close()
                    m = _variant_metrics(v, engine.metrics(outcome), gi)
                    img = (
                        None
                        if outcome.image_HxWx3 is None
                        else outcome.job.finish(outcome.image_HxWx3)
                    )
                    if img is not None:  # the distance panel of the written image
                        m["panel"] = outcome.job.panel(_written(img), panels)
                    _write_variant(workdir, v, img, m)
                    claims.release(v.name)
                    programs += outcome.programs
                    failed += m["status"] == "failed"
                    ran += 1
        finally:
            if bar is not None:
                bar.close()
            for w in live.values():
                w.close()
            claims.release_all()
    summary = {
        "variants": len(variants),
        "ran": ran,
        "skipped": len(mine) - len(todo),
        "by_others": len(todo) - ran,
        "failed": failed,
        "groups": len(groups),
        "compiles": compiles.count,
        "step_programs": programs,
        "compile_seconds": compiles.seconds,
        "seconds": time.perf_counter() - t_start,
    }
    if jax.process_count() > 1:  # every process's variants are written: one report
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices("nstjax: variants written")
    if writer:
        _report(config, workdir, variants)
    return summary


def _initialize_distributed(environ=os.environ) -> None:
    """``jax.distributed.initialize`` from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID`` when set (else JAX's cluster auto-detection: SLURM, Cloud TPU,
    ...). CPU processes exchange collectives (the workdir barrier) through gloo."""
    kwargs = {}
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = environ["JAX_COORDINATOR_ADDRESS"]
    for key, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if environ.get(env):
            try:
                kwargs[key] = int(environ[env])
            except ValueError:
                raise UsageError(f"{env} must be an integer, got {environ[env]!r}") from None
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; else unused
    jax.distributed.initialize(**kwargs)


def _pins(variants: list[sweep.Variant]) -> dict:
    """What else decides the results: each weights setting resolved to a source (or
    file) and its SHA-256, and every image's SHA-256 (a changed file is a different
    sweep, whatever its path): the content, the styles, the masks and an ``init`` file."""
    weights, images = {}, {}
    for v in variants:
        s = v.settings
        if s.method == "gatys":
            key = f"{s.weights}|{s.weights_format or ''}"
            if key not in weights:
                weights[key] = weights_api.pin(s.weights, s.weights_format)
        masks = [m.removeprefix("!") for m in (*s.masks, *s.style_masks) if m not in ("", "-")]
        init = [s.init] if s.method == "gatys" and s.init not in INITS else []
        for path in (v.content, *v.styles, *masks, *init):
            if path not in images:
                try:
                    images[path] = cache.sha256_file(Path(path))
                except OSError as e:
                    raise UsageError(f"cannot read {path!r}: {e.strerror}") from None
    return {"weights": weights, "images": images}


class _PyramidVariant:
    """A coarse-to-fine variant: runs alone, level by level (:mod:`nstjax.pyramid`)."""

    def __init__(self, v: sweep.Variant, weights):
        self.tag, self.weights = v, weights

    def group_key(self) -> tuple:
        return ("pyramid", self.tag.index)


def _build_jobs(todo: list[sweep.Variant]) -> list:
    """One job per variant; targets and inits once per distinct images and objective."""
    weights: dict = {}
    images = inputs.ImageCache()
    caches: dict = {}
    jobs = []
    for v in todo:
        s = v.settings
        if s.method == "arbitrary":
            jobs.append(arbitrary_batch.build_job(s, v.content, v.styles, images, tag=v))
            continue
        key = (s.weights, s.weights_format)
        if key not in weights:
            weights[key] = weights_api.load(*key)
        if s.scales:
            jobs.append(_PyramidVariant(v, weights[key]))
            continue
        jobs.append(build.build_job(s, v.content, v.styles, weights[key], images, caches, tag=v))
    return jobs


def _run_pyramid(workdir: Path, item: _PyramidVariant, config, group: int, bar, claims) -> dict:
    from nstjax import pyramid  # noqa: PLC0415

    v = item.tag
    live = _live_writer(workdir, v, config)
    offsets = np.cumsum([0] + [level.steps for level in v.settings.levels()])

    def on_chunk(job, level, step, rec_KxN, state):
        claims.heartbeat(v.name)
        at = int(offsets[level]) + step
        keys = job.program.objective.record_keys
        live.write_steps(at - rec_KxN.shape[1], keys, rec_KxN)
        if bar is not None:
            bar.runs = 1
            bar.write_steps(at, keys, rec_KxN)

    try:
        outcome, m = pyramid.run(v.settings, v.content, list(v.styles), item.weights, on_chunk,
                                 stop_on_nonfinite=False)  # fmt: skip
    finally:
        live.close()
    img = None if outcome.image_HxWx3 is None else outcome.job.finish(outcome.image_HxWx3)
    if img is not None:
        m["panel"] = outcome.job.panel(_written(img))
    return _write_variant(workdir, v, img, _variant_metrics(v, m, group))


def _written(img: np.ndarray) -> np.ndarray:
    return image.to_uint8(img).astype(np.float32)


def _live_writer(workdir: Path, v: sweep.Variant, config) -> writers.MetricWriter:
    """Per-step losses of a variant as its chunks finish: CSV, and TensorBoard if asked."""
    d = sweep.variant_dir(workdir, v)
    d.mkdir(parents=True, exist_ok=True)
    tb = config.get("tensorboard", False)
    return writers.MultiWriter(
        [
            writers.CsvWriter(d / "losses.csv"),
            writers.TensorBoardWriter(workdir / "tensorboard" / v.name) if tb else None,
        ]
    )


def _on_chunk(workdir: Path, live: dict, bar, claims: Claims, config):
    def on_chunk(jobs, step, rec_RxKxN, state):
        keys = jobs[0].program.objective.record_keys
        first = step - rec_RxKxN.shape[2]
        for i, job in enumerate(jobs):
            claims.heartbeat(job.tag.name)
            if job.tag.name not in live:
                live[job.tag.name] = _live_writer(workdir, job.tag, config)
            live[job.tag.name].write_steps(first, keys, rec_RxKxN[i])
        if bar is not None:
            bar.runs = len(jobs)
            bar.write_steps(first, keys, rec_RxKxN[0])
        s = jobs[0].settings
        if s.save_every and step % s.save_every == 0 and step < s.steps:
            imgs = np.asarray(state["avg"])[:, 0]
            for i, job in enumerate(jobs):
                path = sweep.variant_dir(workdir, job.tag) / f"step_{step:05d}.png"
                image.save(path, job.finish(imgs[i]))

    return on_chunk


def _report(config, workdir: Path, variants: list[sweep.Variant]) -> None:
    from nstjax import report  # noqa: PLC0415  (matplotlib: only when reporting)

    rows, histories, images = [], {}, {}

    for v in variants:
        path = sweep.variant_dir(workdir, v) / "metrics.json"
        if not path.is_file():
            continue
        try:  # anyone's file (another runner's, a hand-edited one): checked, not trusted
            m = atomic.read_json_object(path)
            row = _row(v, m)
            history = {k: m[k] for k in LOSS_KEYS} if all(k in m for k in LOSS_KEYS) else None
            _check_report_entry(row, history)
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:
            print(f"nstjax: {v.name} left out of the report: {str(path)!r}: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)  # fmt: skip
            continue
        rows.append(row)
        if history is not None:
            histories[v.name] = history
        if (sweep.variant_dir(workdir, v) / "image.png").is_file():
            images[v.name] = sweep.variant_dir(workdir, v) / "image.png"
    panel_rows = {
        r["name"]: {k.removeprefix("panel/"): v for k, v in r.items() if k.startswith("panel/")}
        for r in rows
    }
    panel_rows = {k: v for k, v in panel_rows.items() if v}
    if panel_rows:  # rows: variants (the loss optimized); columns: distances
        from nstjax import panel_report  # noqa: PLC0415  (matplotlib: only when reporting)

        panel_report.panel_heatmap(workdir / "panel.png", panel_rows, title=workdir.name)
    grid = config.get("grid", None)
    report.write_reports(
        workdir,
        rows,
        histories,
        images,
        grid_rows=grid.get("rows") if grid else None,
        grid_cols=grid.get("cols") if grid else None,
    )
