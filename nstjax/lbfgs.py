"""L-BFGS direction as an optax ``(init, update)`` transformation, loop-free.

Same state and mathematics as ``optax.scale_by_lbfgs`` (two-loop recursion, Nocedal &
Wright Algorithm 7.4; initial inverse Hessian ``gamma I`` with ``gamma = s.y / y.y``; the
first step capped to unit norm), with the two loops over the memory unrolled at trace
time instead of ``lax.scan``. On XLA:CPU a ``scan`` inside the VGG step program made the
whole step ~0.15 s slower at 256x256 with 100 memory slots (benchmarks/gatys_speed.py);
unrolled, the recursion costs about what its arithmetic does. The equivalence with optax
is tested in tests/test_lbfgs.py.

Unlike optax, and like ``torch.optim.LBFGS``, a curvature pair is stored only if its
curvature is positive: on a non-convex objective a pair with ``s.y <= 0`` makes the
inverse Hessian approximation indefinite, and its direction can point uphill (on a
sum of sines in 6 dimensions with lr 1, optax's direction took f from 4 to 1.6e7 in
60 steps). torch's test is ``s.y > 1e-10``, which depends on the loss's scale (it
drops every pair of a well-conditioned problem near its minimum); here it is
``s.y > MIN_COSINE |s| |y|`` (:data:`MIN_COSINE`), which also drops pairs whose
curvature is float32 rounding noise. A skipped pair leaves the memory and ``gamma``
(the initial inverse Hessian scale, from the newest stored pair, as in torch) as they
were, so every direction is ``H g`` with ``H`` positive definite: a descent direction.
While no pair is stored yet, a skipped pair doubles ``gamma`` (:data:`GROWTH`): the
unit-norm first step is tiny for an image (0.03 px a pixel at 128x128), and from the
content image the style loss has no positive curvature along it, so the step would stay
that small until rounding let a pair through (45 steps at 128x128 with 20 pairs).
``gamma`` is moreover kept positive and finite (1 otherwise), and a non-finite pair is
never stored. On a convex objective the directions are optax's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

MIN_COSINE = 1e-4
"""A pair is stored only if ``s.y > MIN_COSINE * |s| * |y|``."""


GROWTH = 2.0
"""While the memory is empty, a skipped (finite) pair multiplies the step scale by this,
during the first :data:`MAX_GROWTH_STEPS` steps (at most 2^20: a million-fold)."""
MAX_GROWTH_STEPS = 20


class LBFGSState(NamedTuple):
    """``optax.ScaleByLBFGSState``'s fields, plus what skipping pairs needs.

    ``pairs`` counts the pairs stored (the next is written to slot ``pairs % m``, the
    oldest is there too); ``gamma`` is the scale from the newest stored pair.
    """

    count: jax.Array
    params: optax.Params
    updates: optax.Updates
    diff_params_memory: optax.Updates
    diff_updates_memory: optax.Updates
    weights_memory: jax.Array
    pairs: jax.Array
    gamma: jax.Array


def _vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _axpy(alpha, x, y):
    """``y + alpha * x`` over pytrees, keeping ``y``'s dtypes."""
    return jax.tree.map(lambda a, b: (b + alpha * a).astype(b.dtype), x, y)


def precondition(updates, s_memory, y_memory, rho_memory, gamma, memory_idx):
    """``H updates`` for the L-BFGS inverse Hessian approximation ``H``.

    ``s_memory`` / ``y_memory`` stack past parameter / gradient differences along a
    leading axis of ``m`` slots, written round-robin; ``memory_idx`` is the next slot
    to write (the oldest entry). Empty slots have ``rho = 0`` and contribute nothing.
    """
    m = rho_memory.shape[0]
    slot = [(memory_idx + j) % m for j in range(m)]  # oldest ... newest

    def at(tree, i):
        return jax.tree.map(lambda x: x[i], tree)

    q, alphas = updates, [None] * m
    for j in reversed(range(m)):
        i = slot[j]
        alphas[j] = rho_memory[i] * _vdot(at(s_memory, i), q)
        q = _axpy(-alphas[j], at(y_memory, i), q)
    r = jax.tree.map(lambda x: (gamma * x).astype(x.dtype), q)
    for j in range(m):
        i = slot[j]
        beta = rho_memory[i] * _vdot(at(y_memory, i), r)
        r = _axpy(alphas[j] - beta, at(s_memory, i), r)
    return r


def _positive(x: jax.Array, fallback: float | jax.Array = 1.0) -> jax.Array:
    return jnp.where(jnp.isfinite(x) & (x > 0.0), x, fallback)


def scale_by_lbfgs(memory_size: int = 10) -> optax.GradientTransformation:
    """Turns gradients into L-BFGS directions (as ``optax.scale_by_lbfgs``, but a pair
    without positive curvature is not stored; see the module docstring)."""
    if memory_size < 1:
        raise ValueError("memory_size must be >= 1")

    def init_fn(params):
        def stacked(leaf):
            return jnp.zeros((memory_size, *leaf.shape), leaf.dtype)

        return LBFGSState(
            count=jnp.asarray(0, jnp.int32),
            params=optax.tree.zeros_like(params),
            updates=optax.tree.zeros_like(params),
            diff_params_memory=jax.tree.map(stacked, params),
            diff_updates_memory=jax.tree.map(stacked, params),
            weights_memory=jnp.zeros(memory_size),
            pairs=jnp.asarray(0, jnp.int32),
            gamma=jnp.asarray(1.0, jnp.float32),
        )

    def update_fn(updates, state, params):
        first = state.count == 0
        s = optax.tree.sub(params, state.params)
        y = optax.tree.sub(updates, state.updates)
        sy = _vdot(y, s)
        yy = _vdot(y, y)
        ratio = sy / jnp.where(yy > 0.0, yy, 1.0)
        curved = sy > MIN_COSINE * jnp.sqrt(_vdot(s, s) * yy)  # False for NaN
        keep = ~first & curved & jnp.isfinite(sy) & (_positive(ratio, 0.0) > 0.0)
        slot = state.pairs % memory_size
        rho = jnp.where(keep, 1.0 / jnp.where(keep, sy, 1.0), 0.0)
        s_memory, y_memory, rho_memory = jax.tree.map(
            # one slot rewritten (with itself when skipped): no pass over the whole memory
            lambda mem, new: mem.at[slot].set(jnp.where(keep, new.astype(mem.dtype), mem[slot])),
            (state.diff_params_memory, state.diff_updates_memory, state.weights_memory),
            (s, y, rho),
        )
        pairs = state.pairs + keep.astype(jnp.int32)
        norm = jnp.sqrt(_vdot(updates, updates))  # the first step is capped to unit norm
        # Until a pair is stored the direction is gamma * g. A skipped pair means no
        # positive curvature along the step: growing it (x2 per step) leaves a region
        # where the first, unit-norm step kept every pair in float32 noise (45 steps of
        # 0.03 px at 128x128 from the content image before).
        grow = (state.pairs == 0) & jnp.isfinite(sy) & (state.count <= MAX_GROWTH_STEPS)
        held = jnp.where(grow, GROWTH * state.gamma, state.gamma)
        gamma = jnp.where(first, jnp.minimum(1.0, 1.0 / norm), jnp.where(keep, ratio, held))
        gamma = _positive(gamma).astype(jnp.float32)
        direction = precondition(
            updates, s_memory, y_memory, rho_memory, gamma, pairs % memory_size
        )
        new_state = LBFGSState(
            count=state.count + 1,
            params=params,
            updates=updates,
            diff_params_memory=s_memory,
            diff_updates_memory=y_memory,
            weights_memory=rho_memory,
            pairs=pairs,
            gamma=gamma,
        )
        return direction, new_state

    return optax.GradientTransformation(init_fn, update_fn)
