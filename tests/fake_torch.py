"""A minimal ``torch.save`` writer for tests, without torch.

It writes what torch writes for a dict of tensors: a protocol-2 pickle whose
tensors reduce to ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, backward_hooks)`` and whose storages are persistent ids
``("storage", torch.FloatStorage, key, "cpu", numel[, view])``, in either the
legacy stream layout (:func:`save_legacy`) or the zip layout (:func:`save_zip`).

Pickle refuses to record a global it cannot look up again, so stand-in
``torch`` and ``torch._utils`` modules are put in ``sys.modules`` for the
duration of a dump only (and whatever was there is restored).
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

STORAGE_NAMES: dict[np.dtype, str] = {
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.bool_): "BoolStorage",
}
_EXTRA_STORAGES = ("BFloat16Storage", "UntypedStorage")
ITEMSIZES = {name: dtype.itemsize for dtype, name in STORAGE_NAMES.items()}
ITEMSIZES.update(BFloat16Storage=2, UntypedStorage=1)
_DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16", "uint8", "int8", "int16")
_DTYPE_NAMES += ("int32", "int64", "bool")
_FUNCTIONS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3")
_FUNCTIONS += ("_rebuild_parameter",)
_CHUNK = 1 << 20


class _DTypeStandIn:
    """Pickles as the global ``torch.<name>``, like a ``torch.dtype``."""

    def __init__(self, name: str):
        self.name = name
        self.__module__ = "torch"

    def __reduce__(self) -> str:
        return self.name


def _make_modules() -> tuple[types.ModuleType, types.ModuleType]:
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in (*STORAGE_NAMES.values(), *_EXTRA_STORAGES):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    for name in _DTYPE_NAMES:
        setattr(torch, name, _DTypeStandIn(name))
    for name in _FUNCTIONS:

        def stand_in(*args: Any) -> None:
            raise AssertionError("fake torch functions are never called")

        stand_in.__module__ = "torch._utils"
        stand_in.__name__ = stand_in.__qualname__ = name
        setattr(utils, name, stand_in)
    return torch, utils


TORCH, TORCH_UTILS = _make_modules()


@contextlib.contextmanager
def torch_names() -> Iterator[None]:
    """Makes ``torch`` and ``torch._utils`` resolve to the stand-ins, temporarily."""
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = TORCH, TORCH_UTILS
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class Storage:
    """A flat typed storage; ``type_name`` defaults from the array's dtype.

    ``numel`` declares a size other than the data's in the pickle (a lying file).
    """

    def __init__(self, data: np.ndarray, type_name: str | None = None, numel: int | None = None):
        self.data = np.ascontiguousarray(data).reshape(-1)
        self.type_name = type_name or STORAGE_NAMES[self.data.dtype]
        self.numel = self.data.size if numel is None else numel

    def chunks(self, order: str) -> Iterator[bytes]:
        """The data's bytes in ``order`` ("<" or ">"), a piece at a time."""
        data = self.data.astype(self.data.dtype.newbyteorder(order))
        step = max(1, _CHUNK // max(1, data.itemsize))
        for start in range(0, data.size, step):
            yield data[start : start + step].tobytes()


class Zeros(Storage):
    """A storage of ``size`` zeros, written a piece at a time (never whole in memory).

    ``numel`` declares another size in the pickle (a lying file).
    """

    def __init__(self, size: int, type_name: str = "FloatStorage", numel: int | None = None):
        self.data = np.zeros(0, np.float32)
        self.type_name, self.size = type_name, size
        self.numel = size if numel is None else numel

    def chunks(self, order: str) -> Iterator[bytes]:
        left = self.size * ITEMSIZES[self.type_name]
        while left > 0:
            yield bytes(min(left, _CHUNK))
            left -= _CHUNK


class StorageView:
    """A legacy-format view: elements ``[offset, offset + numel)`` of ``base``."""

    def __init__(self, base: Storage, offset: int, numel: int):
        self.base, self.offset, self.numel = base, offset, numel


class Tensor:
    """What a torch tensor pickles as; ``rebuild`` picks the rebuild function."""

    def __init__(
        self,
        storage: Storage | StorageView,
        offset: int,
        size: Sequence[int],
        stride: Sequence[int],
        rebuild: str = "_rebuild_tensor_v2",
        dtype: str | None = None,
    ):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)
        self.rebuild, self.dtype = rebuild, dtype

    def reduce(self) -> tuple:
        base = (self.storage, self.offset, self.size, self.stride)
        function = getattr(TORCH_UTILS, self.rebuild)
        if self.rebuild == "_rebuild_tensor":
            return function, base
        hooks = collections.OrderedDict()
        if self.rebuild == "_rebuild_tensor_v3":
            return function, (*base, False, hooks, getattr(TORCH, self.dtype))
        return function, (*base, False, hooks)


class Parameter:
    """What an ``nn.Parameter`` pickles as."""

    def __init__(self, data: Tensor):
        self.data = data

    def reduce(self) -> tuple:
        return TORCH_UTILS._rebuild_parameter, (self.data, True, collections.OrderedDict())


def tensor(array: np.ndarray, type_name: str | None = None, **kwargs: Any) -> Tensor:
    """A contiguous tensor with its own storage (``type_name`` as for :class:`Storage`)."""
    array = np.ascontiguousarray(array)
    stride = tuple(s // array.itemsize for s in array.strides)
    return Tensor(Storage(array, type_name), 0, array.shape, stride, **kwargs)


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[str, Storage] = {}
        self._keys: dict[int, str] = {}

    def _key(self, storage: Storage) -> str:
        key = self._keys.setdefault(id(storage), str(1000 + len(self._keys)))
        self.storages[key] = storage
        return key

    def persistent_id(self, obj: Any) -> tuple | None:
        if isinstance(obj, StorageView):
            base = obj.base
            view = (f"{self._key(base)}_view{obj.offset}", obj.offset, obj.numel)
        elif isinstance(obj, Storage):
            base, view = obj, None
        else:
            return None
        cls = getattr(TORCH, base.type_name)
        pid = ("storage", cls, self._key(base), "cpu", base.numel)
        return (*pid, view) if self.legacy else pid

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (Tensor, Parameter)):
            return obj.reduce()
        return NotImplemented


def _dump(obj: Any, legacy: bool) -> tuple[bytes, dict[str, Storage]]:
    buf = io.BytesIO()
    with torch_names():
        pickler = _Pickler(buf, legacy)
        pickler.dump(obj)
    return buf.getvalue(), pickler.storages


def legacy_bytes(obj: Any, big_endian: bool = False, main: bytes | None = None) -> bytes:
    """A legacy-format file's bytes; ``main`` replaces the main pickle if given."""
    order = ">" if big_endian else "<"
    sys_info = {
        "protocol_version": PROTOCOL_VERSION,
        "little_endian": not big_endian,
        "type_sizes": {"short": 2, "int": 4, "long": 8},
    }
    out = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info):
        pickle.dump(header, out, protocol=2)
    pickled, storages = _dump(obj, legacy=True)
    out.write(pickled if main is None else main)
    keys = sorted(storages)
    pickle.dump(keys, out, protocol=2)
    for key in keys:
        out.write(struct.pack(order + "q", storages[key].numel))
        for chunk in storages[key].chunks(order):
            out.write(chunk)
    return out.getvalue()


def save_legacy(obj: Any, path: str | Path, big_endian: bool = False) -> Path:
    """Writes ``obj`` like ``torch.save(obj, path, _use_new_zipfile_serialization=False)``."""
    Path(path).write_bytes(legacy_bytes(obj, big_endian))
    return Path(path)


def save_zip(
    obj: Any,
    path: str | Path,
    folder: str = "archive",
    big_endian: bool = False,
    main: bytes | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """Writes ``obj`` like ``torch.save(obj, path)``; ``main`` replaces data.pkl if given.

    torch stores every entry uncompressed; ``compression`` (a ``zipfile`` method)
    compresses the storages' entries, as a repacked or hostile archive might.
    """
    pickled, storages = _dump(obj, legacy=False)
    order = ">" if big_endian else "<"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{folder}/data.pkl", pickled if main is None else main)
        zf.writestr(f"{folder}/byteorder", "big" if big_endian else "little")
        for key, storage in storages.items():
            info = zipfile.ZipInfo(f"{folder}/data/{key}")
            info.compress_type = compression
            with zf.open(info, "w") as dst:
                for chunk in storage.chunks(order):
                    dst.write(chunk)
        zf.writestr(f"{folder}/version", "3\n")
    return Path(path)
