"""The weight cache under concurrency: processes sharing a cache build an entry once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nstjax.weights import cache

# Each process asks for the same entry at the same moment (a barrier file); building it
# takes 0.5 s and appends a line to builds.txt. Then every process reads the entry back,
# checking its SHA-256 (cache.load raises on a mismatch).
WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from nstjax.weights import cache
    d = Path(sys.argv[1])
    while not (d / "go").exists():
        time.sleep(0.005)
    def build():
        with open(d / "builds.txt", "a") as f:
            f.write(sys.argv[2] + "\\n")
        time.sleep(0.5)
        params = {"conv": {"kernel": np.full((3, 3), float(sys.argv[2]), np.float32)}}
        return params, {"source": "test", "builder": sys.argv[2]}
    record = cache.ensure("entry", build, directory=d / "cache")
    params, again = cache.load("entry", d / "cache")
    assert again == record, (again, record)
    print(record["builder"], float(params["conv"]["kernel"][0, 0]))
    """
)


def test_concurrent_fetches_build_once(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-500:] for _, e in outs]
    builds = (tmp_path / "builds.txt").read_text().split()
    assert len(builds) == 1  # without the lock: every process built it
    # every process reads the one entry that was built
    assert {o.strip() for o, _ in outs} == {f"{builds[0]} {float(builds[0])}"}
    record = json.loads((tmp_path / "cache" / "entry.json").read_text())
    assert record["builder"] == builds[0]
    assert record["npz_sha256"] == cache.sha256_file(tmp_path / "cache" / "entry.npz")


def test_force_rebuilds_and_a_failed_build_keeps_the_entry(tmp_path):
    params = {"a": np.ones(2, np.float32)}
    first = cache.ensure("e", lambda: (params, {"n": 1}), directory=tmp_path)
    again = cache.ensure("e", lambda: pytest.fail("built again"), directory=tmp_path)
    assert again == first
    forced = cache.ensure("e", lambda: (params, {"n": 2}), force=True, directory=tmp_path)
    assert forced["n"] == 2

    def fail():
        raise RuntimeError("download failed")

    with pytest.raises(RuntimeError, match="download failed"):
        cache.ensure("e", fail, force=True, directory=tmp_path)
    assert cache.lookup("e", tmp_path)["n"] == 2  # the lock is released, the entry kept
    assert cache.ensure("e", fail, directory=tmp_path)["n"] == 2


def test_a_cached_entry_is_read_without_the_lock(tmp_path, monkeypatch):
    # a shared cache may be read-only: the lock file could not be created there
    cache.ensure("e", lambda: ({"a": np.ones(2, np.float32)}, {"n": 1}), directory=tmp_path)

    def no_lock(*args):
        raise PermissionError("read-only cache")

    monkeypatch.setattr(cache, "locked", no_lock)
    assert cache.ensure("e", lambda: pytest.fail("built again"), directory=tmp_path)["n"] == 1


def test_loaded_arrays_are_shared_by_device_put_not_copied(tmp_path):
    """XLA:CPU adopts a host array only at a 64-byte boundary: every array read from the
    cache is placed there, so that device_put (targets, engine, panel) shares its memory."""
    import jax

    rng = np.random.default_rng(0)
    params = {f"conv{i}": {"kernel": rng.normal(size=(3, 3, i + 1, 7)).astype(np.float32),
                           "bias": rng.normal(size=(7,)).astype(np.float32)}
              for i in range(6)}  # fmt: skip
    cache.store("entry", params, {"source": "test"}, directory=tmp_path)
    loaded, _ = cache.load("entry", tmp_path)
    for name, layer in params.items():
        for key, want in layer.items():
            got = loaded[name][key]
            np.testing.assert_array_equal(got, want)
            assert got.ctypes.data % cache.ALIGN == 0
            assert jax.device_put(got).unsafe_buffer_pointer() == got.ctypes.data


def test_aligned_copies_only_what_it_must():
    buf = np.zeros(1000 + 16, np.uint8)
    off = next(i for i in range(0, 64, 4) if (buf.ctypes.data + i) % cache.ALIGN)
    a = buf[off : off + 400].view(np.float32).reshape(10, 10)
    a[...] = np.arange(100, dtype=np.float32).reshape(10, 10)
    b = cache.aligned(a)
    assert b is not a and b.ctypes.data % cache.ALIGN == 0 and b.shape == (10, 10)
    np.testing.assert_array_equal(b, a)
    assert cache.aligned(b) is b
    t = cache.aligned(np.arange(12, dtype=np.float32).reshape(3, 4).T)  # not C-contiguous
    assert t.flags.c_contiguous and t.ctypes.data % cache.ALIGN == 0
    np.testing.assert_array_equal(t, np.arange(12, dtype=np.float32).reshape(3, 4).T)
