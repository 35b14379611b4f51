"""The persistent compilation cache: a second run of the same shapes compiles nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zlib

import numpy as np

from nstjax import aot, cli, panel_refs, process

# Two layers, not the default six: what is tested is how the programs are kept, not their
# depth, and a command compiles in about half the time (12.4 -> 6.9 s).
SHALLOW = ["--style-layers", "relu1_1,relu2_1", "--content-layers", "relu2_1"]


def _stylize(images, tmp_path, cache_dir, weights_cache, name, children="0", panel=None):
    env = dict(
        os.environ,
        NSTJAX_COMPILE_CACHE=str(cache_dir),
        NSTJAX_CACHE=str(weights_cache),
        NSTJAX_COMPILE_CHILD=children,
        NSTJAX_PANEL=panel or os.environ["NSTJAX_PANEL"],
    )
    metrics = tmp_path / f"{name}.json"
    subprocess.run(
        [sys.executable, "-m", "nstjax", "stylize", "--content", str(images / "tubingen.jpg"),
         "--style", str(images / "starry_night.jpg"), "--output", str(tmp_path / f"{name}.png"),
         "--size", "32", "--steps", "3", "--quiet", "--metrics", str(metrics),
         *SHALLOW],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    return json.loads(metrics.read_text())


def test_second_run_compiles_nothing(images, tmp_path, weights_cache, capsys, monkeypatch):
    cache_dir = tmp_path / "xla"
    first = _stylize(images, tmp_path, cache_dir, weights_cache, "a")
    second = _stylize(images, tmp_path, cache_dir, weights_cache, "b")
    assert first["compiles"]["compiled"] > 5 and first["compiles"]["cache_hits"] == 0
    assert second["compiles"]["compiled"] == 0
    assert second["compiles"]["cache_hits"] == first["compiles"]["compiled"]
    # the step and the final losses come back whole (not even traced)
    whole = sorted((cache_dir / aot.SUBDIR).glob("*.bin"))
    assert len(whole) >= 2 and second["compiles"]["whole_executables"] == len(whole)
    assert first["compiles"]["whole_executables"] == 0
    assert second["loss"] == first["loss"]  # the cached programs compute the same
    monkeypatch.setenv("NSTJAX_COMPILE_CACHE", str(cache_dir))
    assert cli.main(["cache", "info"]) == 0
    jax_files = first["compiles"]["compiled"]  # JAX keeps every program it compiled
    assert (f"{cache_dir}, {jax_files} files, {len(whole)} whole executables"
            in capsys.readouterr().out)  # fmt: skip
    # a damaged executable is never loaded: it is removed, JAX's cache serves the run
    for f in whole:
        f.write_bytes(f.read_bytes()[:-100] + bytes(100))
    third = _stylize(images, tmp_path, cache_dir, weights_cache, "c")
    assert third["compiles"]["whole_executables"] == 0 and third["loss"] == first["loss"]
    assert third["compiles"]["compiled"] == 0 and not any(f.exists() for f in whole)
    # ... and the program is kept whole again once it really compiles
    process.clear_compile_cache()
    _stylize(images, tmp_path, cache_dir, weights_cache, "d")
    fifth = _stylize(images, tmp_path, cache_dir, weights_cache, "e")
    assert fifth["compiles"]["whole_executables"] == len(whole)
    assert fifth["loss"] == first["loss"]
    assert cli.main(["cache", "clear"]) == 0
    assert not cache_dir.exists()


def test_cold_programs_compile_in_children(images, tmp_path, weights_cache):
    # a panel of a few distances (the whole one compiles for ~12 CPU-seconds), w2's LAPACK
    # program among them
    panel = "gram+w2+sliced_w2+mse"
    here = _stylize(images, tmp_path, tmp_path / "a", weights_cache, "here", panel=panel)
    # JAX's cache holds every program now, the store of whole executables nothing (as
    # after an upgrade of nstjax): the children compile for real and keep them whole
    shutil.rmtree(tmp_path / "a" / aot.SUBDIR)
    kids = _stylize(images, tmp_path, tmp_path / "a", weights_cache, "kids", "1", panel)
    assert here["compiles"]["children"] == 0 and kids["compiles"]["children"] == 2
    assert kids["compiles"]["children_failed"] == 0
    # the panel's child marked its work done: a later run starts no child for it
    assert len(list((tmp_path / "a" / aot.SUBDIR).glob(f"*{aot.DONE}"))) == 1
    # the step and the panel's programs were read back whole, not compiled here
    assert kids["compiles"]["whole_executables"] >= 4
    assert kids["compiles"]["compiled"] == 0
    assert kids["loss"] == here["loss"] and kids["final"] == here["final"]
    assert kids["panel"] == here["panel"]
    assert sorted(here["panel"]["raw"]) == ["content/mse", "style/gram", "style/sliced_w2",
                                            "style/w2"]  # fmt: skip
    # w2's LAPACK program is kept whole too: nothing is marked unstorable
    assert not list((tmp_path / "a" / aot.SUBDIR).glob(f"*{aot.UNSTORABLE}"))
    warm = _stylize(images, tmp_path, tmp_path / "a", weights_cache, "warm", "1", panel)
    assert warm["compiles"]["children"] == 0 and warm["compiles"]["compiled"] == 0
    assert warm["compiles"]["whole_executables"] == kids["compiles"]["whole_executables"]
    assert warm["loss"] == here["loss"]
    fresh = _stylize(images, tmp_path, tmp_path / "b", weights_cache, "fresh", "1", panel)
    assert fresh["compiles"]["children"] == 2 and fresh["loss"] == here["loss"]
    assert fresh["panel"] == here["panel"]
    # the panel's child worked from the params the run's panel uses: the run read the
    # child's reference distances back (one file; a second: it scored them again)
    for d in ("a", "b"):
        assert len(list((tmp_path / d / panel_refs.SUBDIR).glob("*.json"))) == 1


def test_kernel_transforms_described_without_running():
    """A cold run's compile children get the transformed kernels' descriptions from their
    trace alone (the run makes them after the step's child): they must key the
    step program exactly as the real arrays do, or the run would compile it again."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from nstjax import array_desc, vgg

    mesh = Mesh(np.array(jax.devices()[:1]), ("runs",))
    params = jax.device_put(
        vgg.init_params(jax.random.key(0)), NamedSharding(mesh, PartitionSpec())
    )
    args = (params, (1, 24, 32, 3), ("relu1_1", "relu2_1", "relu3_1"), "winograd4")
    shapes = vgg.prepared_shapes(*args)
    real = vgg.prepare_params_jit(*args)
    assert sorted(real) == sorted(shapes) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2",
                                              "conv3_1"]  # fmt: skip
    assert isinstance(shapes["conv2_2"]["winograd"], jax.ShapeDtypeStruct)
    assert shapes["conv2_2"]["winograd"].shape == real["conv2_2"]["winograd"].shape
    assert shapes["conv2_2"]["kernel"] is real["conv2_2"]["kernel"]  # the params' own
    assert array_desc.describe(shapes) == array_desc.describe(real) is not None
    assert aot.key("x", ("f",), (shapes,), None) == aot.key("x", ("f",), (real,), None) is not None


def test_a_failed_child_says_why():
    import pytest

    from nstjax import child, monitor, panel

    with monitor.count_compiles() as counts:
        c = child.Child(panel.prebuild, None, {}, None, [], None)
        assert not c.wait() and c.error.startswith("compile child exited 1: ")
        assert "Error" in c.error and not c.wait()  # waiting again answers the same
        # an argument that does not pickle: no child, the run compiles here
        d = child.Child(panel.prebuild, lambda: None)
        assert not d.wait() and d.error.startswith("compile child not started: ")
    assert (counts.children, counts.children_failed) == (2, 2)
    with pytest.raises(ValueError, match="may not run in a compile child"):
        child.Child(print, "hello")


def test_cache_can_be_turned_off(images, tmp_path, weights_cache, monkeypatch):
    m = _stylize(images, tmp_path, "0", weights_cache, "off")
    assert m["compiles"]["cache_hits"] == 0
    assert not (tmp_path / "0").exists()


def test_whole_executables_need_a_key_the_source_covers(monkeypatch, tmp_path):
    import jax
    import jax.numpy as jnp

    from nstjax.terms import registry

    monkeypatch.setenv("NSTJAX_COMPILE_CACHE", str(tmp_path))
    x = jnp.ones((2, 3))
    k = aot.key("f", ("static",), (x,), None)
    assert k is not None and k == aot.key("f", ("static",), (x,), None)
    assert aot.key("f", ("static",), (jnp.ones((2, 4)),), None) != k  # shapes
    assert aot.key("f", ("other",), (x,), None) != k  # static arguments
    assert aot.key("f", (object(),), (x,), None) is None  # repr with an address
    jax.config.update("jax_enable_x64", True)  # set in code: a child would not see it
    try:
        assert aot.key("f", ("static",), (x,), None) != k
    finally:
        jax.config.update("jax_enable_x64", False)
    # a kind registered from user code: its function is outside the package
    kind = registry.registered()["gram"]
    monkeypatch.setitem(
        registry.KINDS, "mine", dataclasses.replace(kind, name="mine", loss=lambda *a, **o: 0)
    )
    assert aot.key("f", ("static",), (x,), None) is None
    monkeypatch.delitem(registry.KINDS, "mine")
    # programs with other custom calls (a Python callback) are not kept, only marked
    shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
    callback = jax.jit(lambda a: jax.pure_callback(np.negative, shape, a)).lower(x).compile()
    assert not aot.store(k, callback) and not list((tmp_path / aot.SUBDIR).glob("*.bin"))
    assert aot.known(k) and list((tmp_path / aot.SUBDIR).glob(f"*{aot.UNSTORABLE}"))
    plain = jax.jit(lambda a: a * 2).lower(x).compile()
    assert aot.store(k, plain)
    assert float(aot.load(k, (x,))(x)[0, 0]) == 2.0
    monkeypatch.setenv("NSTJAX_AOT", "0")
    assert aot.directory() is None and aot.load(k, (x,)) is None


LAPACK_PROGRAM = """
import sys
import zlib
import jax, jax.numpy as jnp, numpy as np
from nstjax import aot, monitor
x = jnp.asarray(np.arange(16, dtype=np.float32).reshape(4, 4) / 7.0)
lower = jax.jit(lambda a: jnp.linalg.eigh(a @ a.T + jnp.eye(4))[0]).lower
with monitor.count_compiles() as counts:
    f = aot.compile("eigh_test", lambda: lower(x), (), (x,))
print(counts.aot_hits, *np.asarray(f(x)).tolist())
"""


def test_lapack_programs_reload_in_a_fresh_process(tmp_path):
    """w2's eigh is a LAPACK custom call. A fresh process that loaded such a program
    before jaxlib's LAPACK table was filled crashed (SIGSEGV, jax 0.10.2); aot.load
    fills it first, so the program is kept whole and loads with the same values."""
    env = {**os.environ, "NSTJAX_COMPILE_CACHE": str(tmp_path), "NSTJAX_AOT": "1"}

    def run():
        proc = subprocess.run([sys.executable, "-c", LAPACK_PROGRAM], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        hits, *values = proc.stdout.split()
        return int(hits), np.asarray(values, np.float64)

    hits_cold, cold = run()
    assert hits_cold == 0 and list((tmp_path / aot.SUBDIR).glob("*.bin"))
    hits_warm, warm = run()
    assert hits_warm == 1  # read back whole, not traced
    np.testing.assert_array_equal(warm, cold)
    a = np.arange(16, dtype=np.float64).reshape(4, 4) / 7.0
    np.testing.assert_allclose(cold, np.linalg.eigvalsh(a @ a.T + np.eye(4)), rtol=1e-4)


def test_a_panel_child_starts_only_for_a_panel_not_stored(tmp_path, monkeypatch):
    """A single run starts its panel's compile child at once (before its targets), unless
    the panel is off or a child already built the same spec at the same image shapes."""
    import types

    from nstjax import build, child, panel
    from nstjax.settings import Settings
    from nstjax.weights.preprocessing import CAFFE

    monkeypatch.setenv("NSTJAX_COMPILE_CACHE", str(tmp_path))
    started = []
    monkeypatch.setattr(child, "Child", lambda fn, *args: started.append((fn, args)) or "kid")
    obj = types.SimpleNamespace(pooling="avg", preprocessing=CAFFE, ceil_mode=None)
    content, style = np.zeros((24, 32, 3), np.float32), np.ones((20, 30, 3), np.float32)
    images = (content, [style], [1.0])
    on = Settings(panel="gram+mse")
    assert build.start_panel_child(on, obj, {}, images) == "kid"
    assert started[0][0] is panel.prebuild and started[0][1][2] is content
    assert build.start_panel_child(dataclasses.replace(on, panel="off"), obj, {}, images) is None
    k = panel.prebuild_key(obj, content, [style], ("gram",), ("mse",))
    assert k == panel.prebuild_key(obj, content + 1, [style * 2], ("gram",), ("mse",))
    assert k != panel.prebuild_key(obj, content, [style[1:]], ("gram",), ("mse",))
    assert k != panel.prebuild_key(obj, content, [style], ("gram", "w2"), ("mse",))
    aot.mark_done(k)
    assert aot.known(k) and build.start_panel_child(on, obj, {}, images) is None
    assert len(started) == 1
    monkeypatch.setenv("NSTJAX_COMPILE_CHILD", "0")
    assert build.start_panel_child(Settings(panel="gram"), obj, {}, images) is None


def test_a_child_nobody_waited_for_is_killed_at_exit():
    """A run that fails before it needs its children leaves none compiling."""
    script = (
        "from nstjax import child, panel\n"
        "c = child.Child(panel.prebuild, None, {}, None, [], None)\n"
        "print(c._proc.pid)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    pid = int(out.stdout.split()[-1])
    assert not os.path.exists(f"/proc/{pid}")  # gone (importing JAX alone takes longer)


UPGRADE = """
import shutil, sys
import nstjax
nstjax.setup()
import jax, jax.numpy as jnp
from nstjax import aot, monitor
if sys.argv[1] == "upgraded":
    shutil.rmtree(aot.directory())  # an upgrade: every key of the store is new ...
if sys.argv[1] != "first":
    aot.source_fingerprint = lambda: "f" * 64  # ... since nstjax's source is
def f(x, n):
    return jnp.sin(x) * n
with monitor.count_compiles() as c:
    y = aot.Jit(f, static_argnums=(1,))(jax.device_put(jnp.ones(8)), 3)
print(c.count, c.aot_hits, len(list(aot.directory().glob("*.bin"))), float(y[0]))
"""


def test_after_an_upgrade_a_program_compiles_for_real_and_is_kept_whole(tmp_path):
    """The program's name carries nstjax's source fingerprint: after an upgrade JAX's
    cache misses, so the program really compiles and is stored whole, instead of being
    handed back by JAX's cache (which cannot be stored) at every later run."""
    env = dict(os.environ, NSTJAX_COMPILE_CACHE=str(tmp_path / "xla"))
    outs = []
    for phase in ("first", "upgraded", "again"):
        res = subprocess.run([sys.executable, "-c", UPGRADE, phase], env=env, check=True,
                             capture_output=True, text=True)  # fmt: skip
        outs.append(res.stdout.split())
    (compiled1, _, stored1, y1), (compiled2, _, stored2, y2), (compiled3, whole3, _, y3) = outs
    assert int(compiled1) >= 1 and stored1 == "1"
    assert int(compiled2) >= 1 and stored2 == "1"  # JAX's cache did not serve f
    assert compiled3 == "0" and whole3 == "1" and y1 == y2 == y3  # read back whole


def test_an_in_process_compile_gives_the_heap_back(monkeypatch, tmp_path):
    import jax.numpy as jnp

    from nstjax import malloc

    monkeypatch.setenv("NSTJAX_COMPILE_CACHE", str(tmp_path))
    trims = []
    monkeypatch.setattr(malloc, "trim", lambda: trims.append(1) or True)
    f = aot.Jit(lambda a: a * 3)
    x = jnp.ones((3, 5))
    assert float(f(x)[0, 0]) == 3.0 and trims == [1]  # compiled here: trimmed after
    assert float(f(x)[0, 0]) == 3.0 and trims == [1]  # the same executable: nothing to trim


CUT_SHORT = """
import nstjax
nstjax.setup()
import warnings
import jax, jax.numpy as jnp
print(float(jax.jit(lambda x: jnp.sin(x) * 3 + 1)(jnp.float32(2.0))))
warnings.warn("an unrelated warning")
"""


def test_an_entry_written_in_part_is_removed_and_written_again(tmp_path):
    """JAX writes an entry in place and never overwrites one: cut short (a run killed
    while writing it), every later run warned and compiled it again. nstjax removes it
    in one line, and the run writes it whole."""
    cache = tmp_path / "xla"
    env = dict(os.environ, NSTJAX_COMPILE_CACHE=str(cache))

    def run():
        res = subprocess.run([sys.executable, "-c", CUT_SHORT], env=env, check=True,
                             capture_output=True, text=True)  # fmt: skip
        return float(res.stdout.split()[-1]), res.stderr

    y1, err1 = run()
    (entry,) = cache.glob("jit__lambda-*-cache")
    whole = entry.read_bytes()
    entry.write_bytes(whole[: len(whole) // 2])
    y2, err2 = run()
    lines = [line for line in err2.splitlines() if "cache" in line]
    assert lines == [
        "nstjax: removed 1 unreadable compilation cache entry of jit__lambda (written in part:"
        " by a run that was stopped, or one still writing); compiled again"
    ]
    assert "Error reading" not in err2
    again = entry.read_bytes()  # written whole by the run that found it (its compile
    assert len(again) > len(whole) // 2 and process._readable(again)  # time may differ)
    y3, err3 = run()
    assert "cache" not in err3 and "Error reading" not in err3
    for err in (err1, err2, err3):  # other warnings are shown as before
        assert "UserWarning: an unrelated warning" in err
    assert y1 == y2 == y3 == np.float32(np.sin(np.float32(2.0)) * 3 + 1)


def test_only_unreadable_entries_of_the_named_module_are_removed(tmp_path):
    whole = zlib.compress(b"an executable" * 100)
    key = "0123456789abcdef" * 4
    files = {
        f"jit_a-{key}-cache": whole,
        f"jit_a-{key[::-1]}-cache": whole[:20],  # cut short
        f"jit_ab-{key}-cache": whole[:20],  # another module whose name starts alike
        f"jit_a-b-{key}-cache": whole[:20],  # and another
        f"jit_b-{key}-cache": b"",
        f"jit_a-{key}-atime": b"",  # not an entry
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    cut = f"jit_a-{key[::-1]}-cache"
    assert process.remove_unreadable_entries(tmp_path, "jit_a") == [cut]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(files) - {cut})
    assert process.remove_unreadable_entries(tmp_path, "jit_b") == [f"jit_b-{key}-cache"]
