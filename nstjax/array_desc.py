"""Picklable descriptions of trees of arrays, for another process to lower the same
program (the compile children of :mod:`nstjax.child`): each leaf's shape, dtype, weak
type and sharding (one device, or a named sharding over a mesh of this host's devices).
"""

from __future__ import annotations

import jax
import numpy as np


def _sharding_desc(s) -> tuple | None:
    mesh = getattr(s, "mesh", None)
    if isinstance(s, jax.sharding.NamedSharding) and isinstance(mesh, jax.sharding.Mesh):
        ids = tuple(d.id for d in mesh.devices.flat)
        return ("named", ids, mesh.devices.shape, mesh.axis_names, tuple(s.spec), s.memory_kind)
    if isinstance(s, jax.sharding.SingleDeviceSharding):
        return ("single", next(iter(s.device_set)).id, s.memory_kind)
    return None


def describe(tree):
    """A picklable description of a tree of arrays or ``jax.ShapeDtypeStruct`` s (shape,
    dtype, weak type, sharding), for another process to lower the same program; None if
    a sharding is not plain (or missing)."""
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for x in leaves:
        if not isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
            return None
        desc = _sharding_desc(x.sharding)
        if desc is None:
            return None
        out.append((tuple(x.shape), x.dtype.name, bool(x.weak_type), desc))
    return treedef, out


def shapes(description):
    """:func:`describe`'s description as a tree of ``jax.ShapeDtypeStruct``."""
    treedef, leaves = description
    devices = {d.id: d for d in jax.devices()}
    cache: dict = {}

    def sharding(desc):
        if desc not in cache:
            if desc[0] == "named":
                _, ids, dshape, axes, spec, memory_kind = desc
                mesh = jax.sharding.Mesh(
                    np.array([devices[i] for i in ids], dtype=object).reshape(dshape), axes
                )
                cache[desc] = jax.sharding.NamedSharding(
                    mesh, jax.sharding.PartitionSpec(*spec), memory_kind=memory_kind
                )
            else:
                cache[desc] = jax.sharding.SingleDeviceSharding(
                    devices[desc[1]], memory_kind=desc[2]
                )
        return cache[desc]

    sds = [
        jax.ShapeDtypeStruct(shape, np.dtype(dtype), sharding=sharding(desc), weak_type=weak)
        for shape, dtype, weak, desc in leaves
    ]
    return jax.tree.unflatten(treedef, sds)
