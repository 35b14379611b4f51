"""The unrolled L-BFGS direction (nstjax/lbfgs.py) against optax's scan version."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nstjax import lbfgs


def _objective(x):
    a = jax.random.normal(jax.random.PRNGKey(0), (24, 24))
    q = a @ a.T / 24 + jnp.eye(24)
    return 0.5 * x @ q @ x + jnp.sum(jnp.sin(x))


def _trajectory(opt, steps=18):
    x = jnp.linspace(-1.0, 1.0, 24)
    state = opt.init(x)
    update = jax.jit(opt.update)
    out = []
    for _ in range(steps):
        direction, state = update(jax.grad(_objective)(x), state, x)
        x = x - 0.5 * direction
        out.append(np.asarray(x))
    return np.stack(out), state


@pytest.mark.parametrize("memory", [1, 4, 30])  # 30 > steps: empty slots stay inert
def test_matches_optax(memory):
    ours, state = _trajectory(lbfgs.scale_by_lbfgs(memory))
    ref, ref_state = _trajectory(optax.scale_by_lbfgs(memory))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert int(state.count) == int(ref_state.count) == 18
    np.testing.assert_allclose(state.weights_memory, ref_state.weights_memory, rtol=1e-4)
    # It optimizes: the objective went down a lot from the start.
    assert _objective(jnp.asarray(ours[-1])) < 0.2 * _objective(jnp.linspace(-1.0, 1.0, 24))


def test_rejects_empty_memory():
    with pytest.raises(ValueError, match="memory_size"):
        lbfgs.scale_by_lbfgs(0)
