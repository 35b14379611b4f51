"""Reader for Keras VGG19 weight files in HDF5 (``.h5``).

Two namings are accepted, with or without a ``model_weights`` top group (the
latter appears when a whole model was saved):

* Keras 1 / the released ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``:
  ``block1_conv1/block1_conv1_W_1:0`` (kernel) and ``block1_conv1_b_1:0`` (bias);
* Keras 2: ``block1_conv1/block1_conv1/kernel:0`` and ``.../bias:0``.

Kernels are stored HWIO (TensorFlow layout), as Flax wants them.

Only VGG19's conv kernels and biases are read, and each only after its declared
shape and dtype have been checked against the layer's (HDF5 lets a 2 KB file declare
a dataset of any size, read back as its fill value): a dataset whose shape does not
fit, and every dataset that is not a conv parameter (the classifier head, anything
unknown), comes back as a zero-filled read-only placeholder of its declared shape
that takes no memory, for :mod:`nstjax.weights.formats` to report or ignore.
"""

from __future__ import annotations

import os
import re
from types import ModuleType
from typing import Any

import numpy as np

from nstjax.errors import UsageError
from nstjax.vgg import PARAM_SHAPES

# last path component of a dataset -> "kernel" / "bias"
_ROLES: dict[str, re.Pattern[str]] = {
    "kernel": re.compile(r"^(?:kernel|(?:.*_)?W(?:_\d+)?)(?::\d+)?$"),
    "bias": re.compile(r"^(?:bias|(?:.*_)?b(?:_\d+)?)(?::\d+)?$"),
}
_SKIPPED_GROUPS = ("optimizer_weights",)
_LAYER = re.compile(r"^block(\d+)_conv(\d+)$")
_NUMBERS = "fiu"  # dtype kinds read: floats and integers (at most 8 bytes each)


def _role(dataset_name: str) -> str | None:
    for role, pattern in _ROLES.items():
        if pattern.match(dataset_name):
            return role
    return None


def _expected_shape(layer: str, role: str | None) -> tuple[int, ...] | None:
    """The HWIO shape of a conv parameter of VGG19, or None for anything else."""
    match = _LAYER.match(layer)
    if not match or role is None:
        return None
    return PARAM_SHAPES.get("conv{}_{}".format(*match.groups()), {}).get(role)


def _placeholder(dataset: Any) -> np.ndarray:
    """Zeros of the dataset's declared shape (and numeric dtype), taking no memory."""
    dtype = dataset.dtype if dataset.dtype.kind in _NUMBERS else np.dtype(np.float32)
    shape = dataset.shape if dataset.shape is not None else ()
    return np.broadcast_to(np.zeros((), dtype), shape)


def _read(dataset: Any, name: str, expected: tuple[int, ...] | None, path: str) -> np.ndarray:
    """The dataset's values if it is the conv parameter ``expected`` describes, checked
    before anything is read; else a :func:`_placeholder`."""
    if expected is None or dataset.shape != expected:
        return _placeholder(dataset)
    if dataset.dtype.kind not in _NUMBERS or dataset.dtype.itemsize > 8:
        raise UsageError(f"{path}: dataset {name} holds {dataset.dtype}, not numbers")
    if dataset.external or dataset.is_virtual:
        raise UsageError(f"refusing to load {path}: dataset {name} keeps its data outside it")
    return np.asarray(dataset[()])


def _datasets(group: Any, h5py: ModuleType) -> list[tuple[str, Any]]:
    """(path relative to ``group``, dataset) for every dataset below an h5py ``group``."""
    found: list[tuple[str, Any]] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append((name, obj))

    group.visititems(visit)
    return found


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a Keras VGG19 ``.h5`` file.

    Returns:
      ``{"block1_conv1/kernel": HWIO array, "block1_conv1/bias": array, ...}``.
      A dataset whose role cannot be told keeps its path under its layer, e.g.
      ``"block1_conv1/extra:0"``, so the caller can report it. Datasets that are
      not VGG19 conv parameters of the right shape are placeholders (see the
      module docstring).

    Raises:
      UsageError: h5py is missing, or the file is missing, corrupt, has two
        kernels (or biases) for one layer, or a conv parameter that is not numbers
        or whose data lies outside the file.
    """
    try:
        import h5py  # noqa: PLC0415  (optional: only for .h5 files)
    except ImportError:
        raise UsageError("reading Keras .h5 files needs h5py: pip install h5py") from None
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"weight file {path} does not exist")
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f.get("model_weights", f)
            for layer in root:
                group = root[layer]
                if layer in _SKIPPED_GROUPS or not isinstance(group, h5py.Group):
                    continue
                for name, dataset in _datasets(group, h5py):
                    role = _role(name.rsplit("/", 1)[-1])
                    key = f"{layer}/{role}" if role else f"{layer}/{name}"
                    if key in out:
                        raise UsageError(f"{path} has two datasets for {key}")
                    out[key] = _read(dataset, f"{layer}/{name}", _expected_shape(layer, role), path)
    except UsageError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError, ... on bad files
        message = " ".join(str(exc).split())[:120]
        raise UsageError(f"{path} is not a readable HDF5 weight file ({message})") from exc
    if not out:
        raise UsageError(f"{path} holds no weights")
    return out
