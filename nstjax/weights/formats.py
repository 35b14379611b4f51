"""Weight-file formats and their conversion to canonical VGG19 params.

Canonical params are ``{"conv1_1": {"kernel": HWIO float32, "bias": float32}, ...}``
with the shapes of :data:`nstjax.vgg.PARAM_SHAPES`. Each entry of
:data:`FORMATS` knows which reader opens the file, how raw keys map to
canonical names, which raw keys are the classifier head (ignored), and the
layout of the stored kernels.

torchvision's ``vgg19-dcbb9e9d.pth`` and the Caffe conversion
``vgg19-d01eb7cb.pth`` share key names and layout but not preprocessing, so
they cannot be told apart by content: :func:`detect_format` answers
``"torch_features"`` for both and the caller names one of :data:`FEATURES_FORMATS`.
Preprocessing is not this module's business.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nstjax.errors import UsageError
from nstjax.vgg import CONV_LAYERS, PARAM_SHAPES
from nstjax.weights import keras_h5, pastiche_q, torch_pickle

TORCH_FEATURES = "torch_features"
"""What :func:`detect_format` reports for torchvision-layout torch files."""

_MAX_LISTED = 40  # names per category in a check message

_LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "HWIO": lambda kernel: kernel,
    "OIHW": lambda kernel: kernel.transpose(2, 3, 1, 0),
}

_ROLES = {"weight": "kernel", "bias": "bias", "kernel": "kernel"}

# index of each conv layer in torchvision's ``vgg19().features`` Sequential
_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_FEATURE_LAYERS = dict(zip(_FEATURE_INDICES, CONV_LAYERS, strict=True))

_FEATURES_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")
_GATYS_KEY = re.compile(r"^(conv\d+_\d+)\.(weight|bias)$")
_BLOCK_KEY = re.compile(r"^block(\d+)_conv(\d+)/(kernel|bias)$")
_KERAS_HEAD = ("fc1/", "fc2/", "predictions/")

Target = tuple[str, str]
"""(canonical layer, "kernel" or "bias")."""


def _features_target(key: str) -> Target | None:
    match = _FEATURES_KEY.match(key)
    if not match:
        return None
    index = int(match.group(1))
    return _FEATURE_LAYERS.get(index, f"features.{index}"), _ROLES[match.group(2)]


def _gatys_target(key: str) -> Target | None:
    match = _GATYS_KEY.match(key)
    return (match.group(1), _ROLES[match.group(2)]) if match else None


def _block_target(key: str) -> Target | None:
    match = _BLOCK_KEY.match(key)
    if not match:
        return None
    block, conv, role = match.groups()
    return f"conv{block}_{conv}", role


def _classifier(key: str) -> bool:
    return key.startswith("classifier.")


def _keras_head(key: str) -> bool:
    return key.startswith(_KERAS_HEAD)


def _nothing(key: str) -> bool:
    return False


@dataclass(frozen=True)
class WeightFormat:
    """How to read one kind of weight file and map it onto canonical params.

    Attributes:
      name: registry name.
      reader: path -> raw dict of arrays.
      target: raw key -> (canonical layer, "kernel"/"bias"), or None if unknown.
      ignored: raw keys that are expected but unused (a classifier head).
      layout: layout of the raw kernels, a key of the layout table.
      anchor: raw key of conv1_1's kernel, used to find a prefix such as
        ``"state_dict."`` or ``"module."`` in front of every key.
      description: one line for listings.
    """

    name: str
    reader: Callable[[str], dict[str, np.ndarray]]
    target: Callable[[str], Target | None]
    ignored: Callable[[str], bool]
    layout: str
    anchor: str
    description: str


FORMATS: dict[str, WeightFormat] = {
    "keras_h5": WeightFormat(
        "keras_h5",
        keras_h5.load,
        _block_target,
        _keras_head,
        "HWIO",
        "block1_conv1/kernel",
        "Keras VGG19 .h5 (vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5)",
    ),
    "pastiche_q": WeightFormat(
        "pastiche_q",
        pastiche_q.load,
        _block_target,
        _nothing,
        "HWIO",  # the reader dequantizes and transposes
        "block1_conv1/kernel",
        "pastiche 8-bit quantized Keras VGG19 (..._notop_q.bin)",
    ),
    "torchvision": WeightFormat(
        "torchvision",
        torch_pickle.load,
        _features_target,
        _classifier,
        "OIHW",
        "features.0.weight",
        "torchvision vgg19-dcbb9e9d.pth (retrained, RGB input)",
    ),
    "caffe_pth": WeightFormat(
        "caffe_pth",
        torch_pickle.load,
        _features_target,
        _classifier,
        "OIHW",
        "features.0.weight",
        "Caffe VGG19 converted to torchvision layout, vgg19-d01eb7cb.pth (BGR input)",
    ),
    "gatys_pth": WeightFormat(
        "gatys_pth",
        torch_pickle.load,
        _gatys_target,
        _nothing,
        "OIHW",
        "conv1_1.weight",
        "Gatys et al.'s normalized VGG19, vgg_conv.pth",
    ),
}

FEATURES_FORMATS = ("torchvision", "caffe_pth")
"""The formats a ``"torch_features"`` file may be; only the user knows which."""

# raw key (possibly after a prefix) -> detected format, tried in order
_DETECT: dict[str, str] = {
    "block1_conv1_W_q": "pastiche_q",
    "features.0.weight": TORCH_FEATURES,
    "conv1_1.weight": "gatys_pth",
}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def get_format(name: str) -> WeightFormat:
    """The registry entry for ``name``. Raises UsageError listing the known names."""
    if name in FORMATS:
        return FORMATS[name]
    known = ", ".join(sorted(FORMATS))
    if name == TORCH_FEATURES:
        raise UsageError(f"a {TORCH_FEATURES} file is either torchvision or caffe_pth: name one")
    raise UsageError(f"unknown weight format {name!r}; known formats: {known}")


def detect_format(path: str | os.PathLike) -> str:
    """Guesses a file's format by suffix and content.

    Returns a :data:`FORMATS` name, or ``"torch_features"`` for a
    torchvision-layout file (torchvision or caffe_pth: the caller must say).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"weight file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(len(_HDF5_SIGNATURE))
    if path.lower().endswith((".h5", ".hdf5")) or head == _HDF5_SIGNATURE:
        return "keras_h5"
    names = torch_pickle.keys(path)
    for anchor, fmt in _DETECT.items():
        if any(n == anchor or n.endswith("." + anchor) for n in names):
            return fmt
    known = ", ".join(sorted(FORMATS))
    raise UsageError(f"cannot tell the weight format of {path}; name it, one of: {known}")


def _find_prefix(raw: Mapping[str, Any], anchor: str) -> str:
    """A prefix like ``"state_dict."`` or ``"module."`` found in front of ``anchor``."""
    if anchor in raw:
        return ""
    prefixes = {key[: -len(anchor)] for key in raw if key.endswith("." + anchor)}
    return prefixes.pop() if len(prefixes) == 1 else ""


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{label} {shown}{more}"


def _problems(params: Mapping[str, Any], unrecognized: list[str]) -> list[str]:
    """One entry per kind of problem, each naming every offending tensor."""
    missing, misshaped, extra, nonfinite = [], [], list(unrecognized), []
    for layer, shapes in PARAM_SHAPES.items():
        entry = params.get(layer, {})
        entry = entry if isinstance(entry, Mapping) else {}
        for role, shape in shapes.items():
            name = f"{layer}/{role}"
            if role not in entry:
                missing.append(name)
            elif tuple(np.shape(entry[role])) != shape:
                misshaped.append(f"{name} {tuple(np.shape(entry[role]))} != {shape}")
            elif not np.isfinite(np.asarray(entry[role])).all():
                nonfinite.append(name)
    for layer, entry in params.items():
        roles = entry if isinstance(entry, Mapping) else {"": entry}
        for role in roles:
            if layer not in PARAM_SHAPES or role not in PARAM_SHAPES[layer]:
                extra.append(f"{layer}/{role}" if role else str(layer))
    labelled = (
        ("missing", missing),
        ("mis-shaped", misshaped),
        ("extra", extra),
        ("non-finite", nonfinite),
    )
    return [_listing(label, items) for label, items in labelled if items]


def check_params(params: Mapping[str, Any]) -> None:
    """Raises UsageError naming every missing, extra, mis-shaped or non-finite tensor."""
    problems = _problems(params, [])
    if problems:
        raise UsageError("weights do not fit VGG19: " + "; ".join(problems))


def convert(
    raw: Mapping[str, np.ndarray], fmt: str, check: bool = True
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Maps a reader's raw dict onto canonical params.

    Args:
      raw: raw key -> array, as returned by the format's reader.
      fmt: a :data:`FORMATS` name.
      check: raise UsageError unless the result fits VGG19 exactly; raw keys
        that are neither mapped nor ignored count as extra. Without it, tensors
        that do not fit come back as they were read (layout applied, as a view),
        not converted to float32.

    Returns:
      ``(params, report)``; ``report`` has ``format``, ``prefix`` (stripped
      from every key, e.g. ``"state_dict."``), ``ignored`` (classifier-head
      keys) and ``unrecognized`` (other unused keys), keys as in ``raw``.
    """
    spec = get_format(fmt)
    prefix = _find_prefix(raw, spec.anchor)
    params: dict[str, dict[str, np.ndarray]] = {}
    ignored, unrecognized = [], []
    for original, value in raw.items():
        key = original.removeprefix(prefix)
        target = spec.target(key)
        if target is None:
            (ignored if spec.ignored(key) else unrecognized).append(original)
            continue
        layer, role = target
        if role in params.get(layer, {}):  # two raw keys for one tensor
            unrecognized.append(original)
            continue
        array = np.asarray(value)
        if role == "kernel" and array.ndim == 4:
            array = _LAYOUTS[spec.layout](array)  # a view
        if array.shape == PARAM_SHAPES.get(layer, {}).get(role):
            array = np.ascontiguousarray(array, dtype=np.float32)
        # else it is only reported: left as it is, never copied (it may be any size)
        params.setdefault(layer, {})[role] = array
    report = {
        "format": spec.name,
        "prefix": prefix,
        "ignored": ignored,
        "unrecognized": unrecognized,
    }
    if check:
        problems = _problems(params, unrecognized)
        if problems:
            raise UsageError(
                f"weights read as {spec.name} do not fit VGG19: " + "; ".join(problems)
            )
    return params, report


def load(
    path: str | os.PathLike, fmt: str
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Reads ``path`` with format ``fmt``'s reader and converts it (checked)."""
    spec = get_format(fmt)
    return convert(spec.reader(os.fspath(path)), spec.name)
