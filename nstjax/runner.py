"""Runs a config's sweep into a workdir: batched groups, resumable, with reports."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import jax
import numpy as np

from nstjax import atomic, batch, image, monitor, sweep
from nstjax.errors import UsageError
from nstjax.gatys import LOSS_KEYS
from nstjax.weights import api as weights_api


def _metrics(o: batch.Outcome, weights_info: dict) -> dict:
    s = o.variant.settings
    steps = int(o.history.shape[1])
    m = {key: [float(x) for x in o.history[i]] for i, key in enumerate(LOSS_KEYS)}
    m.update(
        {
            "status": "failed" if o.error else "done",
            "error": o.error,
            "steps": steps,
            "final": (
                None
                if o.final is None
                else {key: float(o.final[i]) for i, key in enumerate(LOSS_KEYS)}
            ),
            "compile_seconds": o.compile_seconds,
            "batch_seconds": o.run_seconds,
            "batch_size": o.batch_size,
            "seconds": o.run_seconds / o.batch_size,  # the batch's wall time, shared out
            "seconds_per_step": o.run_seconds / max(1, steps),  # one step of the whole batch
            "settings": s.as_dict(),
            "overrides": sweep._jsonable(o.variant.overrides),
            "content": o.variant.content,
            "styles": list(o.variant.styles),
            "weights": weights_info,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.local_devices()],
        }
    )
    if o.image_HxWx3 is not None:
        m["height"], m["width"] = (int(x) for x in o.image_HxWx3.shape[:2])
    return m


def _write_variant(workdir: Path, o: batch.Outcome, weights_info: dict, group: int) -> dict:
    d = sweep.variant_dir(workdir, o.variant)
    d.mkdir(parents=True, exist_ok=True)
    if o.image_HxWx3 is not None:
        image.save(d / "image.png", o.image_HxWx3)
    atomic.write_json(d / "config.json", o.variant.record())
    m = dict(_metrics(o, weights_info), group=group)
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
    }


@contextlib.contextmanager
def _closing(bar):
    try:
        yield
    finally:
        if bar is not None:
            bar.close()


def _require_tensorboard():
    try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415
    except ImportError:
        raise UsageError(
            "tensorboard=True needs tensorboardX: pip install 'nstjax[tensorboard]'"
        ) from None
    return SummaryWriter


def _tensorboard(workdir: Path, name: str, m: dict) -> None:
    SummaryWriter = _require_tensorboard()  # noqa: N806
    with SummaryWriter(str(workdir / "tensorboard" / name)) as w:
        for key in LOSS_KEYS:
            for step, value in enumerate(m[key]):
                w.add_scalar(key, value, step)


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
        jax.distributed.initialize()
    if int(config.batch_size) < 1:
        raise UsageError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.get("tensorboard", False):
        _require_tensorboard()  # before hours of work, not after
    variants = sweep.expand(config, sweep_fn, arg)
    writer = jax.process_index() == 0
    sweep.prepare_workdir(workdir, sweep.fingerprint(config, variants), overwrite, writer)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices("nstjax: workdir ready")
    mine = sweep.mine(variants, jax.process_index(), jax.process_count())
    todo = [v for v in mine if not sweep.is_done(workdir, v)]
    weights: dict = {}
    images = batch.ImageCache()
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(
            total=sum(v.settings.steps for v in todo),
            unit="step",
            desc="sweep",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def save_intermediate(vs, step, state):
        s = vs[0].settings
        if s.save_every and step % s.save_every == 0 and step < s.steps:
            imgs = np.asarray(state["image"])[:, 0]
            for i, v in enumerate(vs):
                d = sweep.variant_dir(workdir, v)
                d.mkdir(parents=True, exist_ok=True)
                image.save(d / f"step_{step:05d}.png", imgs[i])

    groups = sweep.groups(todo)
    failed = programs = 0
    with monitor.count_compiles() as compiles, _closing(bar):
        for gi, group in enumerate(groups):
            key = (group[0].settings.weights, group[0].settings.weights_format)
            if key not in weights:
                weights[key] = weights_api.load(*key)
            w = weights[key]
            for outcome in batch.run_group(
                group,
                w,
                int(config.batch_size),
                images,
                on_progress=bar.update if bar else None,
                on_chunk=save_intermediate,
            ):
                m = _write_variant(workdir, outcome, w.info, gi)
                programs += outcome.programs
                failed += m["status"] == "failed"
                if config.get("tensorboard", False):
                    _tensorboard(workdir, outcome.variant.name, m)
    summary = {
        "variants": len(variants),
        "ran": len(todo),
        "skipped": len(mine) - len(todo),
        "failed": failed,
        "groups": len(groups),
        "compiles": compiles.count,
        "step_programs": programs,
        "compile_seconds": compiles.seconds,
        "seconds": time.perf_counter() - t_start,
    }
    _report(config, workdir, variants)
    return summary


def _report(config, workdir: Path, variants: list[sweep.Variant]) -> None:
    from nstjax import report  # noqa: PLC0415

    rows, histories, images = [], {}, {}
    import json  # noqa: PLC0415

    for v in variants:
        path = sweep.variant_dir(workdir, v) / "metrics.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        rows.append(_row(v, m))
        histories[v.name] = {k: m[k] for k in LOSS_KEYS}
        if (sweep.variant_dir(workdir, v) / "image.png").is_file():
            images[v.name] = sweep.variant_dir(workdir, v) / "image.png"
    grid = config.get("grid", None)
    report.write_reports(
        workdir,
        rows,
        histories,
        images,
        grid_rows=grid.get("rows") if grid else None,
        grid_cols=grid.get("cols") if grid else None,
    )
