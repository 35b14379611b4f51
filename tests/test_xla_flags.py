"""Default XLA settings: process flags at start-up, per-program options (nstjax/xla_flags.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import optim, xla_flags

YNN = "xla_cpu_experimental_ynn_fusion_type"


def test_apply_appends_only_flags_the_user_did_not_set():
    gpu = "--xla_gpu_autotune_level"
    env = {"XLA_FLAGS": "--xla_foo=1"}
    assert xla_flags.apply(env) == [f"--{YNN}=dot", f"{gpu}=0"]
    assert env["XLA_FLAGS"] == f"--xla_foo=1 --{YNN}=dot {gpu}=0"
    env = {"XLA_FLAGS": f"--{YNN}=eltwise {gpu}=4"}
    assert xla_flags.apply(env) == []
    assert env["XLA_FLAGS"] == f"--{YNN}=eltwise {gpu}=4"
    env = {"XLA_FLAGS": f"--{YNN}_x=1"}  # a flag that merely starts like ours
    assert xla_flags.apply(env) == [f"--{YNN}=dot", f"{gpu}=0"]
    env = {"NSTJAX_XLA_DEFAULTS": "0"}
    assert xla_flags.apply(env) == [] and "XLA_FLAGS" not in env
    env = {"XLA_FLAGS": "  "}
    assert xla_flags.apply(env) == [f"--{YNN}=dot", f"{gpu}=0"]


def test_a_file_of_flags_is_left_alone_and_a_missing_one_is_one_clear_error(tmp_path):
    flags_file = tmp_path / "xla_flags.txt"
    flags_file.write_text("--xla_cpu_enable_fast_math=false\n")
    env = {"XLA_FLAGS": str(flags_file)}  # XLA reads it as a file of flags: not ours to extend
    assert xla_flags.apply(env) == [] and env["XLA_FLAGS"] == str(flags_file)
    env = {"XLA_FLAGS": str(tmp_path / "missing.txt"), "NSTJAX_XLA_DEFAULTS": "0"}
    with pytest.raises(xla_flags.UsageError, match="names no file"):
        xla_flags.apply(env)
    for entry in (["-m", "nstjax", "cache", "info"], ["-m", "nstjax.main"]):
        env = dict(os.environ, XLA_FLAGS=str(tmp_path / "missing.txt"))
        r = subprocess.run([sys.executable, *entry], capture_output=True, text=True, env=env)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"nstjax: error: XLA_FLAGS={str(tmp_path / 'missing.txt')!r} names no file; XLA "
            "reads a value that does not start with '--' as a file of flags"
        ]


def test_step_options_switch_ynn_off_on_cpus_without_avx512_only():
    avx2, avx512 = "fpu sse2 avx avx2 fma", "fpu sse2 avx avx2 fma avx512f avx512bw"
    opts = xla_flags.step_compiler_options
    assert opts("cpu", {"XLA_FLAGS": f"--{YNN}=dot"}, avx2) == {YNN: ""}
    assert opts("cpu", {}, avx2) == {YNN: ""}
    assert opts("cpu", {}, avx512) == {}  # YNNPACK measured faster there
    assert opts("gpu", {}, avx2) == {}
    assert opts("cpu", {"NSTJAX_XLA_DEFAULTS": "0"}, avx2) == {}
    # A fusion type the user chose is kept.
    assert opts("cpu", {"XLA_FLAGS": f"--{YNN}=dot,eltwise"}, avx2) == {}
    assert xla_flags.step_compiler_options("cpu") == opts("cpu", os.environ,
                                                          xla_flags.cpu_features())  # fmt: skip


def test_one_off_options_are_the_elemental_emitters_and_this_jaxlib_knows_them():
    assert xla_flags.one_off_compiler_options({}) == {"xla_cpu_use_fusion_emitters": False}
    assert xla_flags.one_off_compiler_options({"NSTJAX_XLA_DEFAULTS": "0"}) == {}
    x = jnp.arange(6.0)
    f = jax.jit(lambda a: jnp.sin(a) * 2 + 1)
    options = {**xla_flags.one_off_compiler_options({}), "xla_backend_optimization_level": 0}
    np.testing.assert_allclose(f.lower(x).compile(options)(x), np.sin(np.arange(6.0)) * 2 + 1,
                               rtol=1e-6)  # fmt: skip
    with pytest.raises(Exception, match="No such compile option"):  # unknown ones fail loudly
        f.lower(x).compile({"xla_cpu_no_such_option": False})


def test_options_reach_the_compiled_program():
    x = jnp.asarray(np.random.default_rng(0).random((8, 64, 64)), jnp.float32)
    f = jax.jit(lambda a: jnp.einsum("tpc,tco->tpo", a, a))
    assert "__ynn_fusion" in f.lower(x).compile().as_text()  # the process default
    options = xla_flags.step_compiler_options("cpu", cpu="avx2")
    assert "__ynn_fusion" not in f.lower(x).compile(options).as_text()


def test_chunk_runner_compiles_the_step_with_the_options(monkeypatch, real_weights):
    seen = []
    real = xla_flags.step_compiler_options

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(optim.xla_flags, "step_compiler_options", spy)
    from nstjax import gatys
    from nstjax.settings import Settings

    rng = np.random.default_rng(0)
    content = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    job = gatys.prepare(
        Settings(size=16, style_layers=("relu1_1",), content_layers=("relu1_2",), steps=2),
        content,
        [content[::-1]],
        real_weights,
    )
    gatys.optimize(job)
    assert seen == [real("cpu")]  # this CPU's choice
