"""The one engine: runs a group of jobs as one batched, sharded, compiled program.

Jobs of a group share :meth:`~nstjax.build.Job.group_key` (program and input shapes),
so their optimization states and per-run inputs (targets, loss weights, learning rate,
PRNG key) stack along a leading "runs" axis; the step is ``vmap``-ed over it
(:func:`nstjax.optim.batched_step`) and the runs axis is sharded over the local
devices with a ``NamedSharding``; the VGG params are replicated. Batches are padded to
a fixed size (repeating the last job; the copies are discarded), so a group compiles
exactly once. A single ``stylize`` call is a group of one; nothing else runs the
optimization.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nstjax import aot, malloc, monitor, optim, optimizers, pages, vgg
from nstjax.build import Job
from nstjax.errors import NstError
from nstjax.weights import npz_map

# The optimizer's initial state, read back whole on a warm run: not traced, so optax is
# not even imported (nstjax.aot).
init_states_jit = aot.Jit(optimizers.init_states, static_argnums=(0,))


@dataclasses.dataclass
class Outcome:
    """What one job produced."""

    job: Job
    image_HxWx3: np.ndarray | None
    history: np.ndarray  # record keys x steps
    final: np.ndarray | None  # record keys
    error: str | None
    compile_seconds: float
    run_seconds: float  # wall time of its whole batch's steps
    batch_size: int
    programs: int  # optimization programs compiled for it (the first of a group: 1, else 0)

    @property
    def keys(self) -> tuple[str, ...]:
        return self.job.program.objective.record_keys


def group(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs sharing one compiled program, in order of first appearance."""
    by_key: dict = {}
    for j in jobs:
        by_key.setdefault(j.group_key(), []).append(j)
    return list(by_key.values())


def chunk_plan(steps: int, chunk: int, save_every: int) -> list[int]:
    """Steps per chunk; chunks end at every save point."""
    plan, done = [], 0
    while done < steps:
        n = min(chunk, steps - done)
        if save_every:
            n = min(n, save_every - done % save_every)
        plan.append(n)
        done += n
    return plan


def padded_size(n: int, batch_size: int, n_devices: int) -> int:
    """Batch size for a group of n: at most batch_size, a multiple of the device count."""
    b = min(batch_size, n)
    return -(-b // n_devices) * n_devices


def _stack(trees: Sequence):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


ChunkCallback = Callable[[list[Job], int, np.ndarray, dict], None]


def run_group(
    jobs: list[Job],
    batch_size: int,
    on_chunk: ChunkCallback | None = None,
    devices: Sequence | None = None,
    stop_on_nonfinite: bool = False,
    claim: Callable[[Job], bool] | None = None,
) -> Iterator[Outcome]:
    """Runs one group; yields an :class:`Outcome` per job as each batch finishes.

    ``on_chunk(jobs, step, records_RxKxN, state)`` is called after every chunk with the
    batch's real jobs, the step reached, that chunk's records and the state.
    ``stop_on_nonfinite`` raises :class:`NstError` as soon as a chunk's losses are not
    finite (single runs); otherwise the job is reported failed (sweeps). ``claim(job)``,
    asked just before a job joins a batch, may refuse it (another runner has it): the
    batch is filled with the next jobs instead, and the program still compiles once.
    """
    p = jobs[0].program
    devices = list(devices or jax.local_devices())
    # a run of one: one device; tiles: one device (their programs chain on one)
    devices = devices[: 1 if p.tile else max(1, min(len(devices), len(jobs)))]
    mesh = Mesh(np.array(devices), ("runs",))
    runs_sharding = NamedSharding(mesh, PartitionSpec("runs"))
    replicated = NamedSharding(mesh, PartitionSpec())
    size = padded_size(len(jobs), batch_size, len(devices))
    runner = prepared = None
    compile_seconds = 0.0
    pending = list(jobs)
    while pending:
        batch = []
        while pending and len(batch) < size:
            job = pending.pop(0)
            if claim is None or claim(job):
                batch.append(job)
        if not batch:
            break
        real = len(batch)
        batch = batch + [batch[-1]] * (size - real)
        init_R = jax.device_put(np.stack([j.init_1xHxWx3 for j in batch]), runs_sharding)
        keys_R = jax.device_put(np.stack([j.key for j in batch]), runs_sharding)
        state = init_states_jit(p.opt, init_R, keys_R)
        runs = jax.device_put(_stack([j.run for j in batch]), runs_sharding)
        programs = 0
        if runner is None:
            t0 = time.perf_counter()
            step_child = None
            with monitor.count_compiles() as compiles:
                if _children_on(p):
                    # A cold step compiles in a child process and the distance panel in
                    # another (nstjax.child); they need only the arrays' descriptions. So
                    # the kernel transforms are traced here but run once the step's child
                    # is done, and the optimizer's state is made again then: this process
                    # holds neither while they compile (all three processes at 256x192:
                    # 1,630 -> 1,180 MiB). A small panel's child may finish beside the
                    # steps (Job.steps_beside_panel_child; Job.panel waits for it)
                    shapes = _prepare(p, jobs[0], batch[0], replicated, shapes_only=True)
                    step_child = _start_children(p, batch[0], state, {"vgg": shapes, "runs": runs})
                    if step_child is not None:
                        del state
                        malloc.trim()
                        npz_map.release(jobs[0].vgg_params)  # read next by the transforms
                        pages.release()  # the code pages imports, loads and compiles touched
                        step_child.wait()
            if prepared is None:  # the kernel transforms: not the step's programs
                t1 = time.perf_counter()
                prepared = _prepare(p, jobs[0], batch[0], replicated)
                if step_child is None:  # nor, unless waiting for children, compile time
                    t0 += time.perf_counter() - t1
            if step_child is not None:
                job0 = batch[0]
                if job0.panel_child is not None and not job0.steps_beside_panel_child():
                    job0.panel_child.wait()  # the steps: the cores to themselves
                state = init_states_jit(p.opt, init_R, keys_R)
            with monitor.count_compiles() as reads:
                runner = make_runner(p, state, {"vgg": prepared, "runs": runs})
            compile_seconds = time.perf_counter() - t0
            programs = compiles.events + reads.events
            pages.release()  # the compiler's code pages (cold), the loaders': once a group
        ctx = {"vgg": prepared, "runs": runs}
        t0 = time.perf_counter()
        history = np.zeros((size, len(p.objective.record_keys), 0), np.float32)
        for n in chunk_plan(p.steps, p.chunk_size, p.save_every):
            state, rec = runner(state, n, ctx)
            history = np.concatenate([history, rec], axis=2)
            if stop_on_nonfinite and not np.all(np.isfinite(rec[:real])):
                bad = int(np.argmax(~np.all(np.isfinite(history[:real]), axis=(0, 1))))
                raise NstError(
                    f"the loss became non-finite at step {bad}; try a smaller --lr or "
                    "smaller loss weights"
                )
            if on_chunk is not None:
                on_chunk(batch[:real], history.shape[2], rec[:real], state)
        jax.block_until_ready(state["image"])
        seconds = time.perf_counter() - t0  # the steps alone
        avg_R = state["avg"]
        # the optimizer's memory (L-BFGS: 118 MiB at 256x192) and the steps' scratch go
        # back before the final losses read the raw kernels again (npz_map.release)
        del state
        malloc.trim()
        if p.tile:  # the final image's losses tile by tile too
            final = runner.final_losses(avg_R, ctx)
        else:
            final = np.asarray(optim.final_losses_jit(p.objective, avg_R, keys_R, ctx))
        images_R = np.asarray(avg_R)[:, 0]
        for i, job in enumerate(batch[:real]):
            error = None
            if not np.all(np.isfinite(history[i])):
                bad = np.argmax(~np.all(np.isfinite(history[i]), axis=0))
                error = f"the loss became non-finite at step {int(bad)}"
            elif not np.all(np.isfinite(final[i])):
                error = "the loss at the final image is non-finite"
            ok = error is None
            yield Outcome(
                job,
                images_R[i] if ok else None,
                history[i],
                final[i] if ok else None,
                error,
                compile_seconds,
                seconds,
                real,
                programs,
            )
            compile_seconds, programs = 0.0, 0  # charged to the group's first job


def _prepare(p, first: Job, job: Job, replicated, shapes_only: bool = False) -> dict:
    """The VGG params with their Winograd kernel transforms (:func:`vgg.prepare_params`);
    ``shapes_only``: the transforms as ``jax.ShapeDtypeStruct`` s, traced, not run."""
    args = (conv_shape(p, job.init_1xHxWx3.shape), p.objective.layers, p.objective.conv_impl)
    # device_put of host arrays: no copy on CPU (64-byte aligned: cache.aligned)
    vgg_params = jax.device_put(first.vgg_params, replicated)
    if shapes_only:
        return vgg.prepared_shapes(vgg_params, *args, ceil_mode=p.objective.ceil_mode)
    pages.release()  # the first peak: the code pages imports and loads touched go
    prepared = vgg.prepare_params_jit(vgg_params, *args, ceil_mode=p.objective.ceil_mode)
    # weights mapped from the cache (nstjax.weights.npz_map): the steps read the
    # transformed kernels, not the raw ones, so their pages leave memory until
    # the final losses or the panel read them again (52 MiB at 256x192)
    npz_map.release(first.vgg_params)
    return prepared


def _children_on(p) -> bool:
    """Whether a cold step program would compile in a child (:mod:`nstjax.child`)."""
    from nstjax import child  # noqa: PLC0415

    return not p.tile and child.enabled()


def _start_children(p, job: Job, state: dict, ctx: dict):
    """Starts compiling the step program in a child process when it is not stored, and
    then the first job's distance panel in another; returns the step's child, or None
    (the step is stored, or children are off: :func:`make_runner` compiles here, as it
    does when a child fails)."""
    step_child = optim.start_precompile(p.objective, p.opt, p.chunk_size, p.loop, state, ctx)
    if step_child is not None:
        job.prewarm_panel()
    return step_child


def conv_shape(p, shape_1xHxWxC: tuple) -> tuple:
    """The image shape the convolutions see: the whole image, or a whole tile."""
    if not p.tile:
        return tuple(shape_1xHxWxC)
    b, h, w, c = shape_1xHxWxC
    halo = vgg.halo(p.objective.layers)
    return (b, min(h, p.tile + 2 * halo), min(w, p.tile + 2 * halo), c)


def make_runner(p, state: dict, ctx: dict, chunk_size: int | None = None, loop: str | None = None):
    """The compiled step of program ``p``: whole images (:class:`optim.ChunkRunner`) or
    tile by tile (:class:`nstjax.tiles.TiledRunner`, when ``p.tile``)."""
    if p.tile:
        from nstjax import tiles  # noqa: PLC0415

        return tiles.TiledRunner(p.objective, p.opt, p.tile, state, ctx)
    return optim.ChunkRunner(p.objective, p.opt, chunk_size or p.chunk_size, loop or p.loop,
                             state, ctx)  # fmt: skip


def metrics(o: Outcome) -> dict:
    """The metrics dict of one outcome (per-step records, final values, timings)."""
    keys = o.keys
    m = {key: [float(x) for x in o.history[i]] for i, key in enumerate(keys[:4])}
    m["terms"] = {key: [float(x) for x in o.history[i + 4]] for i, key in enumerate(keys[4:])}
    steps = int(o.history.shape[1])
    final = None
    if o.final is not None:
        final = {key: float(o.final[i]) for i, key in enumerate(keys[:4])}
        final["terms"] = {key: float(o.final[i + 4]) for i, key in enumerate(keys[4:])}
    m.update(
        {
            "status": "failed" if o.error else "done",
            "error": o.error,
            "steps": steps,
            "final": final,
            "compile_seconds": o.compile_seconds,
            "batch_seconds": o.run_seconds,
            "batch_size": o.batch_size,
            "run_seconds": o.run_seconds,
            "seconds_per_step": o.run_seconds / max(1, steps),  # one step of the whole batch
            "settings": o.job.settings.as_dict(),
            "weights": o.job.weights_info,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.local_devices()],
            "jax_version": jax.__version__,
            "memory_estimate": o.job.memory_estimate,
        }
    )
    if o.image_HxWx3 is not None:
        m["height"], m["width"] = (int(x) for x in o.image_HxWx3.shape[:2])
    return m


def single_runner(job: Job, chunk_size: int | None = None, loop: str | None = None):
    """(runner, state, ctx) for one job on one device, for benchmarks that time chunks
    themselves: ``state, records = runner(state, n, ctx)``."""
    p = job.program
    obj = p.objective
    state = init_states_jit(p.opt, jnp.asarray(job.init_1xHxWx3[None]), jnp.asarray(job.key[None]))
    prepared = vgg.prepare_params_jit(
        jax.device_put(job.vgg_params),
        conv_shape(p, job.init_1xHxWx3.shape),
        obj.layers,
        obj.conv_impl,
        ceil_mode=obj.ceil_mode,
    )
    ctx = {"vgg": prepared, "runs": jax.tree.map(jnp.asarray, _stack([job.run]))}
    return make_runner(p, state, ctx, chunk_size, loop), state, ctx
