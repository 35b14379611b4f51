"""Process defaults (nstjax/process.py): synchronous dispatch on CPU."""

from __future__ import annotations

import os
import subprocess
import sys

# A donated host loop whose program needs a 128 MiB scratch buffer (``m``), dispatched
# 200 times: prints the dispatch setting, the scratch size and how far the process's
# peak RSS grew during the loop (MiB).
LOOP = """
import nstjax
nstjax.setup()
import resource, jax, jax.numpy as jnp
def step(x):
    m = jnp.tanh(jnp.outer(x, x))
    return x + 1e-6 * (m @ m[0]) + 1e-6 * (m.T @ m[1])
f = jax.jit(step, donate_argnums=0)
x = jnp.linspace(0.0, 1.0, 4096)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes >> 20
x = jax.block_until_ready(f(x))
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
before = peak()
for _ in range(200):
    x = f(x)
jax.block_until_ready(x)
print(jax.config.values["jax_cpu_enable_async_dispatch"], temp, peak() - before)
"""


def _loop(**env):
    out = subprocess.run(
        [sys.executable, "-c", LOOP],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    asynchronous, temp, growth = out.stdout.split()
    return asynchronous, int(temp), int(growth)


def test_steps_reuse_one_scratch_buffer():
    # Asynchronous dispatch (JAX's default) lets queued executions each hold a scratch
    # buffer, and the retained heap grows by several of them (641-1,281 MiB here).
    asynchronous, temp, growth = _loop(NSTJAX_ASYNC_DISPATCH="0")
    assert asynchronous == "False"
    assert temp >= 100
    if sys.platform.startswith("linux"):
        assert growth < temp // 4


def test_async_dispatch_opt_out():
    asynchronous, _, _ = _loop(NSTJAX_ASYNC_DISPATCH="1")
    assert asynchronous == "True"


def test_the_entry_points_import_neither_flax_nor_optax():
    """Flax (the VGG and fast network modules) and optax (the optimizers) are imported
    when a program is first traced, not by the CLI, the settings or the run modules: a
    warm command reads its programs whole and never needs them (0.25-0.3 s)."""
    code = (
        "import sys, nstjax.cli, nstjax.settings, nstjax.gatys, nstjax.runner, "
        "nstjax.arbitrary.batch\n"
        "print(sorted(m for m in ('flax', 'optax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves():
    """``nstjax.<name>`` for every name of ``nstjax.__all__`` (the package's lazy exports
    follow the modules they live in)."""
    import nstjax

    missing = []
    for name in nstjax.__all__:
        try:
            getattr(nstjax, name)
        except (AttributeError, ImportError) as e:
            missing.append(f"{name}: {e}")
    assert not missing and len(nstjax.__all__) >= 16
