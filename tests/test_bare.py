"""nstjax.bare: stored CPU programs run by jaxlib alone, and a command parsed without JAX."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax import aot, bare, bare_write
from nstjax.errors import UsageError
from nstjax.settings import Settings


def _tiny(p, x):
    return {"y": jnp.tanh(x @ p["w"]) + p["b"], "z": x.sum()}


def _args():
    params = {"w": np.arange(12, dtype=np.float32).reshape(4, 3) / 10,
              "b": np.ones(3, np.float32), "unused": np.zeros(5, np.float32)}  # fmt: skip
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    return params, x


def test_flatten_names_leaves_as_jax_does():
    params, x = _args()
    tree = (params, x)
    with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert sorted(bare_write._path(p) for p, _ in with_paths) == sorted(bare.flatten(tree))
    assert set(bare.flatten(tree)) == {"0/w", "0/b", "0/unused", "1"}


def test_keys_follow_the_environment_and_the_shapes(monkeypatch):
    leaves = bare.flatten(_args())
    env = {"XLA_FLAGS": "", "NSTJAX_CACHE": "/nonexistent"}
    k = bare.key("p", (), leaves, env)
    assert k is not None and len(k) == 64
    assert bare.key("p", (), leaves, {**env, "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}) != k
    assert bare.key("p", (), leaves, {**env, "JAX_ENABLE_X64": "1"}) != k
    assert bare.key("p", (True,), leaves, env) != k
    other = {**leaves, "1": np.zeros((3, 4), np.float32)}
    assert bare.key("p", (), other, env) != k
    assert bare.key("p", (), leaves, {**env, "JAX_PLATFORMS": "cuda"}) is None
    monkeypatch.setattr(bare, "_plugins", lambda: ["jax_cuda13_plugin"])
    assert bare.key("p", (), leaves, env) is None  # JAX could pick a GPU
    assert bare.key("p", (), leaves, {**env, "JAX_PLATFORMS": "cpu"}) is not None

    def unreadable():
        raise OSError("no version file")

    monkeypatch.setattr(bare, "_jax_version_file", unreadable)
    assert bare.key("p", (), leaves, {**env, "JAX_PLATFORMS": "cpu"}) is None


def test_a_damaged_record_is_deleted_not_loaded(tmp_path):
    env = {"NSTJAX_COMPILE_CACHE": str(tmp_path)}
    assert bare.write("k" * 64, {"inputs": [], "outputs": []}, b"\x00" * 100, env)
    header, blob = bare.read("k" * 64, env)
    assert header == {"inputs": [], "outputs": []} and blob == b"\x00" * 100
    path = tmp_path / bare.SUBDIR / f"{'k' * 64}.bin"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(bare.BareError, match="damaged"):
        bare.read("k" * 64, env)
    assert not path.exists()
    with pytest.raises(bare.BareError, match="no record"):
        bare.read("k" * 64, env)
    assert bare.directory({"NSTJAX_BARE": "0"}) is None
    # well-formed files with a header the runtime must not see: deleted the same way
    for header in ({"inputs": "x", "outputs": []}, {"inputs": [["p", [-1], "float32"]],
                   "outputs": []}, [1], "[" * 100_000):  # fmt: skip
        if isinstance(header, str):
            head = header.encode()
            payload = len(head).to_bytes(8, "little") + head
            data = bare.MAGIC + hashlib.sha256(payload).digest() + payload
            path.write_bytes(data)
        else:
            assert bare.write("k" * 64, header, b"", env)
        with pytest.raises(bare.BareError, match="damaged"):
            bare.read("k" * 64, env)
        assert not path.exists()


_RUN = """
import json, sys
import numpy as np
from nstjax import bare
params = {k: np.asarray(v, np.float32) for k, v in json.loads(sys.argv[1]).items()}
x = np.asarray(json.loads(sys.argv[2]), np.float32)
leaves = bare.flatten((params, x))
rt = bare.Runtime()
exe, header = rt.load(bare.read(bare.key("test.tiny", (), leaves)))
y, z = rt.call(exe, header, leaves)
print(json.dumps({"y": y.tolist(), "z": z.tolist(), "jax": "jax" in sys.modules,
                  "inputs": [p for p, _, _ in header["inputs"]]}))
try:
    rt.call(exe, header, {**leaves, "1": np.zeros((3, 4), np.float32)})
except bare.BareError as e:
    print(json.dumps({"error": str(e)}))
"""


def test_a_stored_program_runs_without_jax_bit_for_bit(tmp_path, monkeypatch):
    """aot.Jit(bare_name=...) keeps the program; a process that never imports JAX runs
    it on the same arrays and gets the same bits; a wrong shape is refused."""
    monkeypatch.setenv("NSTJAX_COMPILE_CACHE", str(tmp_path))
    params, x = _args()
    jitted = aot.Jit(_tiny, bare_name="test.tiny")
    want = jitted(jax.device_put(params), x)
    assert len(list((tmp_path / bare.SUBDIR).glob("*.bin"))) == 1
    as_json = json.dumps({k: v.tolist() for k, v in params.items()})
    res = subprocess.run([sys.executable, "-c", _RUN, as_json, json.dumps(x.tolist())],
                         check=True, capture_output=True, text=True, env=os.environ)  # fmt: skip
    got, refused = map(json.loads, res.stdout.splitlines())
    assert got["jax"] is False
    assert sorted(got["inputs"]) == ["0/b", "0/w", "1"]  # JAX dropped the unused leaf
    np.testing.assert_array_equal(np.float32(got["y"]), np.asarray(want["y"]))
    np.testing.assert_array_equal(np.float32(got["z"]), np.asarray(want["z"]))
    assert "does not match the record" in refused["error"]
    # a record written from the executable read back whole (its bytes as first
    # serialized, taken from JAX's pickle) runs the same
    for f in (tmp_path / bare.SUBDIR).glob("*.bin"):
        f.unlink()
    again = aot.Jit(_tiny, bare_name="test.tiny")(jax.device_put(params), x)
    np.testing.assert_array_equal(np.asarray(again["y"]), np.asarray(want["y"]))
    assert len(list((tmp_path / bare.SUBDIR).glob("*.bin"))) == 1
    res = subprocess.run([sys.executable, "-c", _RUN, as_json, json.dumps(x.tolist())],
                         check=True, capture_output=True, text=True, env=os.environ)  # fmt: skip
    np.testing.assert_array_equal(np.float32(json.loads(res.stdout.splitlines()[0])["y"]),
                                  np.asarray(want["y"]))  # fmt: skip


def test_a_fast_network_command_is_parsed_without_jax():
    code = (
        "import sys\n"
        "from nstjax import cli, flags\n"
        "a = cli.build_parser().parse_args(['stylize', '--method', 'arbitrary', '--content',"
        " 'c.jpg', '--style', 's.jpg', '--output', 'o.png', '--style-strength', '0.5'])\n"
        "s = flags.settings_from_args(a)\n"
        "print(s.method, s.style_strength, 'jax' in sys.modules, 'numpy' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True)  # fmt: skip
    assert res.stdout.split() == ["arbitrary", "0.5", "False", "False"]


def test_term_strings_are_still_checked_where_set():
    """The fast network skips checking the default term strings (no JAX for the
    built-in kinds), not the ones a user set."""
    with pytest.raises(UsageError, match="unknown loss term 'bogus'"):
        Settings(method="arbitrary", style_loss=("bogus",))
    with pytest.raises(UsageError, match="unknown loss term"):
        Settings(method="arbitrary", panel="bogus")
    Settings(method="arbitrary")
    Settings()  # the defaults are valid for the method that uses them
