"""The compiled optimization step and chunk loop.

A step evaluates the objective and its gradient once, turns the gradient into a
direction with the optimizer's ``(init, update)`` transformation
(:mod:`nstjax.optimizers`) and moves the image by ``lr * direction``. The PRNG key of
the step is the run's key folded with the step number (as big_vision's ``train.py``
does), so stochastic terms are reproducible.

A chunk runs up to ``chunk_size`` steps: on GPU/TPU inside one compiled program
(``lax.fori_loop`` with a *dynamic* trip count), on CPU as ``n`` calls of the compiled
step (see :func:`resolve_loop`). Python only sees the state between chunks.
Everything here is ``vmap``-ed over a leading "runs" axis: a single run is a batch of
one (see :mod:`nstjax.engine`).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import aot, array_desc, objective, optimizers, xla_flags
from nstjax.errors import UsageError
from nstjax.settings import LOOPS


def step(obj: objective.Objective, opt: optimizers.OptimizerSpec, state: dict, ctx: dict):
    """One optimization step. ``ctx`` = {vgg, targets, weights, lr, ema}.
    Returns (state, record)."""
    key = jax.random.fold_in(state["key"], state["step"])

    def f(image):
        return objective.loss(obj, image, ctx["vgg"], ctx["targets"], ctx["weights"], key)

    (total, parts), grad = jax.value_and_grad(f, has_aux=True)(state["image"])
    state = update(opt, state, total, grad, ctx, value_fn=lambda image: f(image)[0])
    return state, objective.record(total, parts)


def update(opt: optimizers.OptimizerSpec, state: dict, total, grad, ctx: dict, value_fn=None):
    """The step given the loss and its gradient at ``state["image"]``: the optimizer's
    direction, the move by ``lr``, the iterate average. ``value_fn`` (the loss as a
    function of the image) is needed by the line search only. Returns the new state."""
    tx = optimizers.transformation(opt)
    if opt.line_search:  # optax's zoom line search evaluates the loss itself
        updates, opt_state = tx.update(
            grad, state["opt"], state["image"], value=total, grad=grad, value_fn=value_fn
        )
        direction = -updates
    else:
        direction, opt_state = tx.update(grad, state["opt"], state["image"])
    image = state["image"] - ctx["lr"] * direction
    # Iterate averaging (crowsonkb's style-transfer-pytorch): ema = 0 keeps the iterate.
    avg = ctx["ema"] * state["avg"] + (1.0 - ctx["ema"]) * image
    return {"image": image, "avg": avg, "opt": opt_state, "step": state["step"] + 1,
            "key": state["key"]}  # fmt: skip


def batched_step(obj, opt, state: dict, ctx: dict):
    """:func:`step` ``vmap``-ed over a leading "runs" axis of ``state`` and ``ctx["runs"]``
    (``ctx`` = ``{"vgg": params (shared), "runs": {targets, weights, lr}}``). A single run
    is a batch of one: indexing it out instead made XLA copy the L-BFGS history every
    step (+370 MB of temporaries at 256x256), so it is ``vmap``-ed like any batch."""
    return jax.vmap(lambda s, r: step(obj, opt, s, {"vgg": ctx["vgg"], **r}))(state, ctx["runs"])


def run_chunk(obj, opt, chunk_size: int, state: dict, n_steps: jax.Array, ctx: dict):
    """Runs ``n_steps <= chunk_size`` batched steps in one program; returns (state, records).

    ``records[i]`` is step i's record (runs x record keys; evaluated at the iterate
    before the update); unused rows are NaN.
    """

    def body(i, carry):
        state, rec = carry
        state, r = batched_step(obj, opt, state, ctx)
        return state, rec.at[i].set(r)

    runs = state["step"].shape[0]
    rec = jnp.full((chunk_size, runs, len(obj.record_keys)), jnp.nan, jnp.float32)
    return jax.lax.fori_loop(0, jnp.minimum(n_steps, chunk_size), body, (state, rec))


def resolve_loop(loop: str) -> str:
    """``auto``: ``host`` on CPU, ``device`` elsewhere.

    ``device`` runs a chunk as one compiled ``fori_loop``. On XLA:CPU (jax 0.10) a
    VGG19 step inside a while loop runs about 2.5x slower than the same step as a
    top-level program, so on CPU ``host`` calls the compiled step ``n`` times instead
    (one compile; no transfer to the host inside a chunk). The CLI makes those calls
    synchronous (:func:`nstjax.process.cpu_sync_dispatch`: one step's scratch memory
    at a time); under JAX's default they are dispatched asynchronously.
    """
    if loop not in LOOPS:
        raise UsageError(f"unknown loop mode {loop!r}; use one of {LOOPS}")
    if loop == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    return loop


def _program(obj, opt, chunk_size: int, loop: str, state: dict, ctx: dict):
    """The step program of ``loop`` (resolved): (name, lower, statics, dynamics, options)
    for :func:`aot.compile`. ``state`` and ``ctx`` may be arrays or ShapeDtypeStructs.

    The state is donated and its output pinned to the input's sharding, so that the
    compiled program accepts its own output."""
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    rec_sh = jax.tree.leaves(state_sh)[0]
    options = xla_flags.step_compiler_options(jax.default_backend())
    if loop == "device":
        fn = jax.jit(run_chunk, static_argnums=(0, 1, 2), donate_argnums=(3,),
                     out_shardings=(state_sh, None))  # fmt: skip
        n0 = jnp.int32(0)
        return ("optim.run_chunk", lambda: fn.lower(obj, opt, chunk_size, state, n0, ctx),
                (obj, opt, chunk_size), (state, n0, ctx), options)  # fmt: skip
    fn = jax.jit(batched_step, static_argnums=(0, 1), donate_argnums=(2,),
                 out_shardings=(state_sh, rec_sh))  # fmt: skip
    return ("optim.batched_step", lambda: fn.lower(obj, opt, state, ctx), (obj, opt),
            (state, ctx), options)  # fmt: skip


def precompile(obj, opt, chunk_size: int, loop: str, state_desc, ctx_desc) -> None:
    """Compiles the step program and the final losses into the store from shapes alone
    (in a compile child, :mod:`nstjax.child`)."""
    state, ctx = array_desc.shapes(state_desc), array_desc.shapes(ctx_desc)
    ChunkRunner(obj, opt, chunk_size, loop, state, ctx)
    # the engine passes the runs' keys split over the runs, as the image
    keys = jax.ShapeDtypeStruct(state["key"].shape, state["key"].dtype,
                                sharding=state["avg"].sharding)  # fmt: skip
    final_losses_jit.precompile(obj, state["avg"], keys, ctx)


def start_precompile(obj, opt, chunk_size: int, loop: str, state: dict, ctx: dict):
    """A :class:`nstjax.child.Child` compiling the step program when it is not stored
    yet and children are on; else None."""
    from nstjax import child  # noqa: PLC0415

    loop = resolve_loop(loop)
    if not child.enabled():
        return None
    name, _, statics, dynamics, options = _program(obj, opt, chunk_size, loop, state, ctx)
    k = aot.key(name, statics, dynamics, options)
    state_desc, ctx_desc = array_desc.describe(state), array_desc.describe(ctx)
    if k is None or aot.known(k) or state_desc is None or ctx_desc is None:
        return None
    return child.Child(precompile, obj, opt, chunk_size, loop, state_desc, ctx_desc)


class ChunkRunner:
    """Compiles the batched step (or chunk) once (:func:`_program`); then runs chunks of
    steps. ``compile_seconds`` is measured."""

    def __init__(self, obj, opt, chunk_size: int, loop: str, state: dict, ctx: dict):
        self.loop = resolve_loop(loop)
        t0 = time.perf_counter()
        name, lower, statics, dynamics, options = _program(obj, opt, chunk_size, self.loop,
                                                           state, ctx)  # fmt: skip
        self._compiled = aot.compile(name, lower, statics, dynamics, options)
        self.compile_seconds = time.perf_counter() - t0

    def __call__(self, state: dict, n_steps: int, ctx: dict):
        """Runs ``n_steps`` steps; returns (state, records as numpy, runs x keys x steps)."""
        if self.loop == "device":
            state, rec = self._compiled(state, jnp.int32(n_steps), ctx)
            rec = np.asarray(rec)[:n_steps]
        else:
            records = []
            for _ in range(n_steps):  # no transfer until np.asarray
                state, r = self._compiled(state, ctx)
                records.append(r)
            rec = np.stack([np.asarray(r) for r in records])
        return state, np.moveaxis(rec, 0, -1)


def final_losses(obj: objective.Objective, image_RxBxHxWx3, key_Rx2, ctx) -> jax.Array:
    """Records at the image that is written (no step): ``image`` rounded and clipped to
    8-bit pixels, as ``nstjax.image.to_uint8`` saves it; runs x keys, XLA's convolution."""
    obj = objective.one_off(obj)
    image_RxBxHxWx3 = jnp.clip(jnp.round(image_RxBxHxWx3), 0.0, 255.0)

    def one(image, key, r):
        total, parts = objective.loss(
            obj, image, ctx["vgg"], r["targets"], r["weights"], jax.random.fold_in(key, 0x7FFFFFFF)
        )
        return objective.record(total, parts)

    return jax.vmap(one)(image_RxBxHxWx3, key_Rx2, ctx["runs"])


# XLA's default emitters, as the objective's targets: the final image's features then
# round as the targets' did (a content image scores a content loss of exactly 0)
final_losses_jit = aot.Jit(final_losses, static_argnums=(0,))
