"""Bare records written from JAX: a compiled CPU program kept for :mod:`nstjax.bare`.

:class:`nstjax.aot.Jit` calls :func:`write` for a program that asks for it
(``bare_name=``), with the executable it compiled or read back whole; the record then
runs in a process that never imports JAX (:class:`nstjax.bare.Runtime`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from nstjax import bare


def _path(entries) -> str:
    return "/".join(
        str(getattr(e, "key", getattr(e, "idx", getattr(e, "name", e)))) for e in entries
    )


def write(name: str, statics: Sequence, dynamics: Sequence, compiled) -> bool:
    """Writes ``compiled`` as a bare record (:mod:`nstjax.bare`) under program ``name``,
    unless there is one: only on CPU with JAX's default settings, one process, arrays
    for every dynamic argument. True if a record is there now."""
    if (
        jax.default_backend() != "cpu" or jax.process_count() != 1 or jax.config.jax_enable_x64
        or jax.config.jax_default_matmul_precision is not None
    ):  # fmt: skip
        return False
    with_paths = jax.tree_util.tree_flatten_with_path(tuple(dynamics))[0]
    leaves = {_path(p): x for p, x in with_paths}
    if not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves.values()):
        return False
    k = bare.key(name, statics, leaves)
    if k is None or bare.exists(k):
        return k is not None
    try:
        kept = sorted(compiled._executable._kept_var_idx)  # JAX drops unused arguments
        exe = compiled.runtime_executable()
        blob = exe.client.serialize_executable(exe)
        paths = [_path(p) for p, _ in with_paths]
        outs = jax.tree.leaves(compiled.out_info)
    except Exception:  # noqa: BLE001  (another JAX: no record, the JAX path stays)
        return False
    header = {
        "name": name,
        "inputs": [bare.signature({paths[i]: leaves[paths[i]]})[0] for i in kept],
        "outputs": [[list(map(int, o.shape)), str(np.dtype(o.dtype))] for o in outs],
    }
    return bare.write(k, header, blob)
