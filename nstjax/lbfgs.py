"""L-BFGS direction as an optax ``(init, update)`` transformation, in compact form.

Same state and mathematics as ``optax.scale_by_lbfgs`` (initial inverse Hessian
``gamma I`` with ``gamma = s.y / y.y``; the first step capped to unit norm), but the
direction ``H g`` comes from the compact representation of the L-BFGS inverse Hessian
(Byrd, Nocedal & Schnabel 1994, "Representations of quasi-Newton matrices and their use
in limited memory methods", Math. Programming 63, Theorem 2.2), not from the two-loop
recursion (Nocedal & Wright, Algorithm 7.4). With ``S``, ``Y`` the m stored pairs as
columns, oldest first, ``R`` the upper triangle of ``S^T Y`` and ``D`` its diagonal::

    H g = gamma g + S p + gamma Y q,   x = R^-1 S^T g,   q = -x,
    p = R^-T ((D + gamma Y^T Y) x - gamma Y^T g)

Both give the same direction in exact arithmetic (tests/test_lbfgs.py checks every
direction against the two-loop recursion in float64, and the trajectory against
optax's). The two loops visit the m pairs one after the other: unrolled for 100 pairs
they were ~1,500 of the 1,690 kernels of the 256 px step program (its load, compile and
every step paid for them). Here the history is read in four matrix products per step:
``S^T [y, g]``, ``Y^T [s, y, g]`` (which also update ``S^T Y`` and ``Y^T Y``, kept in the
state as m x m matrices in slot order) and ``S p``, ``Y q``; the m x m algebra
(two triangular solves) is negligible.

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
    """``optax.ScaleByLBFGSState``'s fields, plus what skipping pairs and the compact
    form need.

    ``pairs`` counts the pairs stored (the next is written to slot ``pairs % m``, the
    oldest is there too); ``gamma`` is the scale from the newest stored pair;
    ``sy_memory[i, j] = s_i . y_j`` and ``yy_memory[i, j] = y_i . y_j`` over the slots
    (zero for empty ones); ``weights_memory[i] = 1 / s_i . y_i`` (0: empty slot).
    """

    count: jax.Array
    params: optax.Params
    updates: optax.Updates
    diff_params_memory: optax.Updates
    diff_updates_memory: optax.Updates
    weights_memory: jax.Array
    pairs: jax.Array
    gamma: jax.Array
    sy_memory: jax.Array
    yy_memory: jax.Array


def _vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _memory_dot(memory, vectors) -> jax.Array:
    """``[m_i . v_k]``: an m x K matrix, ``memory`` stacking m pytrees, ``vectors`` a list
    of K pytrees like one of them: one pass over the memory."""
    out = 0.0
    for mem, *vs in zip(jax.tree.leaves(memory), *map(jax.tree.leaves, vectors), strict=True):
        v_NxK = jnp.stack([v.reshape(-1) for v in vs], axis=1).astype(mem.dtype)
        out = out + jnp.dot(mem.reshape(mem.shape[0], -1), v_NxK)
    return out


def _combine(memory, coef_M, like):
    """``sum_i coef_i m_i`` as a pytree like ``like``."""

    def one(mem, x):
        flat = jnp.dot(coef_M.astype(mem.dtype), mem.reshape(mem.shape[0], -1))
        return flat.reshape(x.shape).astype(x.dtype)

    return jax.tree.map(one, memory, like)


def compact_coefficients(sy_MxM, yy_MxM, a_M, b_M, valid_M, gamma, oldest):
    """``(p, gamma q)`` of the compact form (module docstring), in slot order, from
    ``S^T Y``, ``Y^T Y``, ``a = S^T g`` and ``b = Y^T g`` in slot order; ``oldest`` is the
    slot of the oldest pair. Empty slots (``valid`` False) get 0."""
    m = a_M.shape[0]
    order = (oldest + jnp.arange(m)) % m  # chronological: oldest ... newest
    v = valid_M[order]
    both = v[:, None] & v[None, :]
    sy = jnp.where(both, sy_MxM[order][:, order], 0.0)
    yy = jnp.where(both, yy_MxM[order][:, order], 0.0)
    a, b = jnp.where(v, a_M[order], 0.0), jnp.where(v, b_M[order], 0.0)
    d = jnp.diagonal(sy)
    r = jnp.triu(sy) + jnp.diag(jnp.where(v, 0.0, 1.0))  # empty slots: identity rows
    x = jax.scipy.linalg.solve_triangular(r, a, lower=False)
    p = jax.scipy.linalg.solve_triangular(r, d * x + gamma * (yy @ x) - gamma * b, trans=1,
                                          lower=False)  # fmt: skip
    p_M = jnp.zeros(m, p.dtype).at[order].set(jnp.where(v, p, 0.0))
    q_M = jnp.zeros(m, x.dtype).at[order].set(jnp.where(v, -gamma * x, 0.0))
    return p_M, q_M


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
            sy_memory=jnp.zeros((memory_size, memory_size), jnp.float32),
            yy_memory=jnp.zeros((memory_size, memory_size), jnp.float32),
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
        pairs = state.pairs + keep.astype(jnp.int32)
        # One pass over each memory as it was: the new slot's row and column of S^T Y
        # and Y^T Y, S^T g and Y^T g; the slot being replaced gets the new pair's dots.
        at_slot = (jnp.arange(memory_size) == slot) & keep
        s_dots = jnp.where(
            at_slot[:, None], jnp.stack([sy, _vdot(s, updates)]),
            _memory_dot(state.diff_params_memory, [y, updates]),
        )  # s_i . y, s_i . g  # fmt: skip
        y_dots = jnp.where(
            at_slot[:, None], jnp.stack([sy, yy, _vdot(y, updates)]),
            _memory_dot(state.diff_updates_memory, [s, y, updates]),
        )  # y_i . s, y_i . y, y_i . g  # fmt: skip
        sy_memory = state.sy_memory.at[:, slot].set(
            jnp.where(keep, s_dots[:, 0], state.sy_memory[:, slot])
        )
        sy_memory = sy_memory.at[slot, :].set(jnp.where(keep, y_dots[:, 0], sy_memory[slot, :]))
        yy_memory = state.yy_memory.at[:, slot].set(
            jnp.where(keep, y_dots[:, 1], state.yy_memory[:, slot])
        )
        yy_memory = yy_memory.at[slot, :].set(
            jnp.where(keep, y_dots[:, 1], yy_memory[slot, :]))  # fmt: skip
        norm = jnp.sqrt(_vdot(updates, updates))  # the first step is capped to unit norm
        # Until a pair is stored the direction is gamma * g. A skipped pair means no
        # positive curvature along the step: growing it (x2 per step) leaves a region
        # where the first, unit-norm step kept every pair in float32 noise (45 steps of
        # 0.03 px at 128x128 from the content image before).
        grow = (state.pairs == 0) & jnp.isfinite(sy) & (state.count <= MAX_GROWTH_STEPS)
        held = jnp.where(grow, GROWTH * state.gamma, state.gamma)
        gamma = jnp.where(first, jnp.minimum(1.0, 1.0 / norm), jnp.where(keep, ratio, held))
        gamma = _positive(gamma).astype(jnp.float32)
        valid = (state.weights_memory > 0.0) | at_slot
        p_M, q_M = compact_coefficients(
            sy_memory, yy_memory, s_dots[:, 1], y_dots[:, 2], valid, gamma, pairs % memory_size
        )
        rho_memory = state.weights_memory.at[slot].set(
            jnp.where(keep, rho, state.weights_memory[slot])
        )
        p_new, q_new = jnp.sum(jnp.where(at_slot, p_M, 0.0)), jnp.sum(jnp.where(at_slot, q_M, 0.0))
        p_old, q_old = jnp.where(at_slot, 0.0, p_M), jnp.where(at_slot, 0.0, q_M)
        direction = jax.tree.map(
            # the new pair's own terms: 0 (not NaN) when it is not stored
            lambda g, u, v, s_, y_: (
                gamma * g + u + v + jnp.where(keep, p_new * s_ + q_new * y_, 0.0)
            ).astype(g.dtype),
            updates,
            _combine(state.diff_params_memory, p_old, updates),
            _combine(state.diff_updates_memory, q_old, updates),
            s,
            y,
        )
        # Every read of the old memories must come before the slot is rewritten in
        # place. The write's index depends on the direction (always ``slot``: its
        # minimum with m or m + 1), so the reads come first for XLA too. A vmapped
        # program that read a donated memory and rewrote a slot of it, unordered, got
        # the memory copied (twice, 118 MiB at 256x192); so did reading the rewritten
        # memory with a batch of one (XLA fused the write into each reader).
        probe = jax.tree.leaves(direction)[0].reshape(-1)[0]
        slot_w = jnp.minimum(slot, memory_size + jnp.isnan(probe).astype(slot.dtype))
        s_memory, y_memory = jax.tree.map(
            # one slot rewritten (with itself when skipped): no pass over the whole memory
            lambda mem, new: mem.at[slot_w].set(
                jnp.where(keep, new.astype(mem.dtype), mem[slot_w])
            ),
            (state.diff_params_memory, state.diff_updates_memory),
            (s, y),
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
            sy_memory=sy_memory,
            yy_memory=yy_memory,
        )
        return direction, new_state

    return optax.GradientTransformation(init_fn, update_fn)
