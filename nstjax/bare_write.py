"""Bare records written from JAX: a compiled CPU program kept for :mod:`nstjax.bare`.

:class:`nstjax.aot.Jit` calls :func:`write` for a program that asks for it
(``bare_name=``), with the executable it compiled or read back whole; the record then
runs in a process that never imports JAX (:class:`nstjax.bare.Runtime`).
"""

from __future__ import annotations

import pickletools
import re
from collections.abc import Sequence

import jax
import numpy as np

from nstjax import bare


def custom_calls(compiled: jax.stages.Compiled) -> set[str]:
    """The custom-call targets of a compiled program (empty for plain XLA)."""
    return set(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text()))


def _path(entries) -> str:
    return "/".join(
        str(getattr(e, "key", getattr(e, "idx", getattr(e, "name", e)))) for e in entries
    )


def executable_bytes(serialized: bytes) -> bytes | None:
    """The executable as jaxlib serialized it, found in JAX's pickle of a compiled program
    (``jax.experimental.serialize_executable.serialize``, kept by :mod:`nstjax.aot`),
    whose persistent id ``("exec", bytes)`` holds them; None unless found exactly once.
    The pickle is read with :mod:`pickletools`: nothing is unpickled."""
    found = []
    ops = list(pickletools.genops(serialized))
    for (_, a, _), (op, b, _) in zip(ops, ops[2:], strict=False):  # "exec", MEMOIZE, bytes
        if a == "exec" and op.name in ("BINBYTES", "BINBYTES8", "SHORT_BINBYTES"):
            found.append(b)
    return found[0] if len(found) == 1 else None


def write(name: str, statics: Sequence, dynamics: Sequence, compiled, serialized=None) -> bool:
    """Writes ``compiled`` as a bare record (:mod:`nstjax.bare`) under program ``name``:
    freshly compiled by XLA in this process, or read back by :mod:`nstjax.aot` from
    ``serialized`` (JAX's pickle: the executable's bytes are taken from it,
    :func:`executable_bytes`; one read back serializes without its code).
    Nothing when there is a record already; only on CPU with
    JAX's default settings, one process, arrays for every dynamic argument, no custom
    calls (LAPACK, callbacks) and no constants hoisted into arguments. True if a
    record is there now; never raises (the JAX path goes on without one)."""
    try:
        return _write(name, statics, dynamics, compiled, serialized)
    except Exception:  # noqa: BLE001  (another JAX, a full disk: no record)
        return False


def _write(name: str, statics: Sequence, dynamics: Sequence, compiled, serialized) -> bool:
    if (
        bare.directory() is None  # records off (NSTJAX_BARE=0, no store): no HLO text read
        or jax.default_backend() != "cpu" or jax.process_count() != 1 or jax.config.jax_enable_x64
        or jax.config.jax_default_matmul_precision is not None
    ):  # fmt: skip
        return False
    with_paths = jax.tree_util.tree_flatten_with_path(tuple(dynamics))[0]
    paths = [_path(p) for p, _ in with_paths]
    leaves = dict(zip(paths, (x for _, x in with_paths), strict=True))
    if len(leaves) != len(paths) or not all(
        hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves.values()
    ):
        return False
    k = bare.key(name, statics, leaves)
    if k is None or bare.exists(k):
        return k is not None
    if custom_calls(compiled) or compiled._params.const_args:
        return False  # LAPACK needs jaxlib's table filled, a callback JAX itself
    kept = sorted(compiled._executable._kept_var_idx)  # JAX drops unused arguments
    if not all(0 <= i < len(paths) for i in kept):
        return False
    if serialized is None:
        exe = compiled.runtime_executable()
        blob = exe.client.serialize_executable(exe)
    else:
        blob = executable_bytes(serialized)
        if blob is None:
            return False
    header = {
        "name": name,
        "inputs": [bare.signature({paths[i]: leaves[paths[i]]})[0] for i in kept],
        "outputs": [
            [list(map(int, o.shape)), str(np.dtype(o.dtype))]
            for o in jax.tree.leaves(compiled.out_info)
        ],
    }
    return bare.write(k, header, blob)
