"""Reader for Keras VGG19 weight files in HDF5 (``.h5``).

Two namings are accepted, with or without a ``model_weights`` top group (the
latter appears when a whole model was saved):

* Keras 1 / the released ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``:
  ``block1_conv1/block1_conv1_W_1:0`` (kernel) and ``block1_conv1_b_1:0`` (bias);
* Keras 2: ``block1_conv1/block1_conv1/kernel:0`` and ``.../bias:0``.

Kernels are stored HWIO (TensorFlow layout), as Flax wants them.
"""

from __future__ import annotations

import os
import re
from types import ModuleType
from typing import Any

import numpy as np

from nstjax.errors import UsageError

# last path component of a dataset -> "kernel" / "bias"
_ROLES: dict[str, re.Pattern[str]] = {
    "kernel": re.compile(r"^(?:kernel|(?:.*_)?W(?:_\d+)?)(?::\d+)?$"),
    "bias": re.compile(r"^(?:bias|(?:.*_)?b(?:_\d+)?)(?::\d+)?$"),
}
_SKIPPED_GROUPS = ("optimizer_weights",)


def _role(dataset_name: str) -> str | None:
    for role, pattern in _ROLES.items():
        if pattern.match(dataset_name):
            return role
    return None


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
      ``"block1_conv1/extra:0"``, so the caller can report it.

    Raises:
      UsageError: h5py is missing, or the file is missing, corrupt or has two
        kernels (or biases) for one layer.
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
                    out[key] = np.asarray(dataset[()])
    except UsageError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError, ... on bad files
        message = " ".join(str(exc).split())[:120]
        raise UsageError(f"{path} is not a readable HDF5 weight file ({message})") from exc
    if not out:
        raise UsageError(f"{path} holds no weights")
    return out
