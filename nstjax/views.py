"""Arrays that hold the same values as others: finding them and keeping one buffer.

One compiled program cannot return one buffer twice, nor return its input: every output
is a new buffer. Several loss kinds keep the style's features themselves as their
targets (``mrf``, ``mmd_rbf``, ``relaxed_emd``, ``sliced_w2``), so a program computing
all of them returned four copies (4 x 76 MiB at 512x384 in the distance panel).
:func:`leaf_views` finds, before compiling, which outputs of a function are its input
reshaped (the caller then leaves them out of the program and uses views of the input);
:func:`share_identical` makes byte-identical leaves of a tree share one buffer.
On CPU, jax arrays and numpy arrays share memory both ways, so the views cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.extend import core as jex_core

VIEW_PRIMITIVES = frozenset({"reshape", "squeeze"})


def leaf_views(fn: Callable, arg: jax.ShapeDtypeStruct) -> tuple:
    """``(treedef, [(shape, dtype), or None])`` of ``fn(arg)``'s leaves: a shape where
    the leaf is ``arg`` itself or only reshaped (its jaxpr: nothing but
    :data:`VIEW_PRIMITIVES` between them, and the same dtype), None elsewhere."""
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(arg)  # one trace for both
    reached = {closed.jaxpr.invars[0]}
    for e in closed.jaxpr.eqns:
        if e.primitive.name in VIEW_PRIMITIVES and e.invars[0] in reached:
            reached.add(e.outvars[0])
    leaves, treedef = jax.tree.flatten(shapes)
    return treedef, [
        (leaf.shape, leaf.dtype)
        if isinstance(v, jex_core.Var) and v in reached and leaf.dtype == arg.dtype
        else None
        for v, leaf in zip(closed.jaxpr.outvars, leaves, strict=True)
    ]


def share_identical(tree):
    """``tree`` with each array leaf that holds the same bytes as an earlier leaf of the
    same dtype replaced by a view of that one (numpy views: no copies on CPU)."""
    leaves, treedef = jax.tree.flatten(tree)
    kept: dict[tuple, list[np.ndarray]] = {}
    out = []
    for leaf in leaves:
        a = np.asarray(leaf)
        a_bytes = a.reshape(-1).view(np.uint8)
        for b in kept.setdefault((a.nbytes, a.dtype.str), []):
            b_bytes = b.reshape(-1).view(np.uint8)
            if np.array_equal(a_bytes[:4096], b_bytes[:4096]) and np.array_equal(a_bytes, b_bytes):
                a = b.reshape(a.shape)
                break
        else:
            kept[(a.nbytes, a.dtype.str)].append(a)
        out.append(a)
    return jax.tree.unflatten(treedef, out)
