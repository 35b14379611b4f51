"""Safe reader for files written by ``torch.save``, without torch.

Both layouts are read: the legacy one (before torch 1.6) -- five pickles in a
row (magic number, protocol 1001, ``sys_info``, the main pickle, the list of
storage keys) followed, per key, by an int64 element count and the raw bytes --
and the zip one: ``<folder>/data.pkl`` plus ``<folder>/data/<key>`` per storage.

Every pickle goes through :class:`_SafeUnpickler`, whose ``find_class``
resolves only an explicit whitelist (``collections.OrderedDict``, torch's
tensor-rebuild functions, storage classes, dtypes) to inert stand-ins defined
here, so a file cannot make this reader run code. Tensors are cut out of their
storage by (offset, size, stride) with bounds checks and copied.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from nstjax.errors import UsageError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_MAX_DEPTH = 64  # nesting of dicts/lists in the main pickle
_MAX_VISITS = 1_000_000  # containers and leaves walked when flattening
_MAX_PICKLE_BYTES = 1 << 28  # size of data.pkl in a zip archive
_MAX_EXPANSION = 1 << 24  # elements a stride-0 tensor may have beyond its storage

# One row per torch dtype: name, numpy type code (the byte order is added when
# reading), storage class, other names of its ``torch.<dtype>`` global. bfloat16
# is read as raw 16-bit words and widened to float32 afterwards.
_DTYPE_TABLE = """
float64  f8 DoubleStorage   double
float32  f4 FloatStorage    float
float16  f2 HalfStorage     half
bfloat16 u2 BFloat16Storage
uint8    u1 ByteStorage
int8     i1 CharStorage
int16    i2 ShortStorage    short
int32    i4 IntStorage      int
int64    i8 LongStorage     long
bool     b1 BoolStorage
"""
_ROWS = [line.split() for line in _DTYPE_TABLE.strip().splitlines()]
_DTYPES: dict[str, str] = {row[0]: row[1] for row in _ROWS}
"""torch dtype -> numpy type code."""
_STORAGE_CLASSES: dict[str, str] = {row[2]: row[0] for row in _ROWS}
"""storage class name -> dtype of its elements."""
_DTYPE_GLOBALS: dict[str, str] = {name: row[0] for row in _ROWS for name in (row[0], *row[3:])}
"""name of a ``torch.<dtype>`` global -> dtype."""


class _Tag(NamedTuple):
    """Stand-in for a torch storage class (kind "storage") or dtype object ("dtype")."""

    kind: str
    dtype: str


class _StorageRef(NamedTuple):
    """Elements ``[offset, offset + numel)`` of storage ``key``, typed ``dtype``."""

    key: str
    dtype: str
    offset: int
    numel: int


class _Tensor(NamedTuple):
    """A tensor to be cut out of a storage: element offset, sizes and strides."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor``: validates, records, copies nothing."""
    if not isinstance(storage, _StorageRef):
        raise TypeError("a tensor's storage is not a storage")
    size, stride = tuple(size), tuple(stride)
    counts = (storage_offset, *size, *stride)
    if len(size) != len(stride) or len(size) > _MAX_DEPTH or not all(map(_is_count, counts)):
        raise ValueError("a tensor has an invalid offset, size or stride")
    return _Tensor(storage, storage_offset, size, stride, storage.dtype)


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any
) -> _Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (requires_grad, hooks, metadata)."""
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v3``: untyped storage, dtype in ``rest[2]``."""
    if len(rest) < 3 or not isinstance(rest[2], _Tag) or rest[2].kind != "dtype":
        raise TypeError("a tensor's dtype is not a dtype")
    return _rebuild_tensor(storage, offset, size, stride)._replace(dtype=rest[2].dtype)


def _rebuild_parameter(data: Any, *_: Any) -> _Tensor:
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    if not isinstance(data, _Tensor):
        raise TypeError("a parameter holds no tensor")
    return data


_FUNCTIONS: dict[tuple[str, str], Callable[..., _Tensor]] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}

_TAGS: dict[tuple[str, str], _Tag] = {
    **{("torch", name): _Tag("storage", dtype) for name, dtype in _STORAGE_CLASSES.items()},
    **{("torch.cuda", name): _Tag("storage", dtype) for name, dtype in _STORAGE_CLASSES.items()},
    ("torch", "UntypedStorage"): _Tag("storage", "uint8"),
    ("torch.storage", "UntypedStorage"): _Tag("storage", "uint8"),
    **{("torch", name): _Tag("dtype", dtype) for name, dtype in _DTYPE_GLOBALS.items()},
}


def _allowed_global(module: str, name: str) -> Any:
    """The inert stand-in for a whitelisted global, or None."""
    key = (module, name)
    if key == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if key in _FUNCTIONS:
        # a fresh object per lookup, so a pickle's BUILD cannot alter shared state
        return functools.partial(_FUNCTIONS[key])
    return _TAGS.get(key)


def _short(value: object, limit: int = 80) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Storages:
    """``persistent_load`` of the main pickle: records each storage key's dtype and size."""

    def __init__(self, path: str):
        self.path = path
        self.dtypes: dict[str, str] = {}
        self.numels: dict[str, int] = {}

    def __call__(self, pid: Any) -> _StorageRef:
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            raise UsageError(f"refusing to load {self.path}: it holds pickled module source")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ValueError(f"unsupported persistent id {_short(pid)}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _Tag) or storage_type.kind != "storage":
            raise TypeError(f"storage of unknown type {_short(storage_type)}")
        if not isinstance(key, str) or not _is_count(numel):
            raise ValueError("a storage has an invalid key or size")
        # as torch does, the first reference to a key fixes its type and size
        dtype = self.dtypes.setdefault(key, storage_type.dtype)
        numel = self.numels.setdefault(key, numel)
        if view is None:
            return _StorageRef(key, dtype, 0, numel)
        _view_key, offset, view_numel = view
        if not (_is_count(offset) and _is_count(view_numel)):
            raise ValueError("a storage view has an invalid offset or size")
        return _StorageRef(key, dtype, offset, view_numel)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only whitelisted globals, to inert stand-ins."""

    def __init__(self, file: BinaryIO, path: str, storages: _Storages | None = None):
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed_global(module, name)
        if found is None:
            raise UsageError(
                f"refusing to load {self._path}: it asks for the Python global "
                f"{_short(module, 60)}.{_short(name, 60)}, which is not a torch tensor type"
            )
        return found

    def persistent_load(self, pid: Any) -> _StorageRef:
        if self._storages is None:
            raise pickle.UnpicklingError("persistent id outside the main pickle")
        return self._storages(pid)


def _itemsize(dtype: str) -> int:
    return np.dtype(_DTYPES[dtype]).itemsize


def _to_array(tensor: _Tensor, raw: np.ndarray, order: str) -> np.ndarray:
    """Copies ``tensor`` out of its storage's bytes ``raw`` (uint8), bounds-checked."""
    ref = tensor.storage
    start = ref.offset * _itemsize(ref.dtype)
    stop = start + ref.numel * _itemsize(ref.dtype)
    if stop > raw.size:
        raise ValueError(f"storage {ref.key} holds {raw.size} bytes, {stop} needed")
    dtype = np.dtype(order + _DTYPES[tensor.dtype])
    count = (stop - start) // dtype.itemsize
    elements = raw[start : start + count * dtype.itemsize].view(dtype)
    native = dtype.newbyteorder("=")
    total = int(np.prod(tensor.size, dtype=object))
    if total == 0:
        out = np.zeros(tensor.size, native)
    else:
        last = tensor.offset + sum(
            (n - 1) * s for n, s in zip(tensor.size, tensor.stride, strict=True)
        )
        if last >= count or total > max(count, _MAX_EXPANSION):
            raise ValueError(f"a tensor reaches outside its storage {ref.key}")
        view = np.lib.stride_tricks.as_strided(
            elements[tensor.offset :],
            shape=tensor.size,
            strides=tuple(s * dtype.itemsize for s in tensor.stride),
            writeable=False,
        )
        out = np.array(view, dtype=native, order="C")
    if tensor.dtype == "bfloat16":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _join(prefix: str, key: object) -> str:
    name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    return f"{prefix}.{name}" if prefix else name


def _flatten(obj: object, path: str) -> dict[str, _Tensor]:
    """Tensors in nested dicts/lists, named by their keys joined with "."."""
    out: dict[str, _Tensor] = {}
    visits = 0

    def walk(node: object, name: str, depth: int) -> None:
        nonlocal visits
        visits += 1
        if depth > _MAX_DEPTH or visits > _MAX_VISITS:
            raise UsageError(f"{path} nests its contents too deeply to be a weight file")
        if isinstance(node, _Tensor):
            if not name:
                raise UsageError(f"{path} holds a single tensor, not named weights")
            if name in out:
                raise UsageError(f"{path} holds two tensors named {name}")
            out[name] = node
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, _join(name, key), depth + 1)
        elif isinstance(node, (list, tuple)) and not isinstance(node, (_StorageRef, _Tag)):
            for index, value in enumerate(node):
                walk(value, _join(name, index), depth + 1)

    walk(obj, "", 0)
    if not out:
        raise UsageError(f"{path} holds no tensors")
    return out


_Parsed = tuple[dict[str, _Tensor], dict[str, np.ndarray] | None, str]


def _parse_legacy(f: BinaryIO, path: str, with_data: bool) -> _Parsed:
    if _SafeUnpickler(f, path).load() != MAGIC_NUMBER:
        raise UsageError(f"{path} is not a torch.save file (bad magic number)")
    version = _SafeUnpickler(f, path).load()
    if version != PROTOCOL_VERSION:
        raise UsageError(f"{path}: unsupported torch.save protocol {_short(version, 20)}")
    sys_info = _SafeUnpickler(f, path).load()
    little = not (isinstance(sys_info, dict) and sys_info.get("little_endian") is False)
    order = "<" if little else ">"
    storages = _Storages(path)
    tensors = _flatten(_SafeUnpickler(f, path, storages).load(), path)
    if not with_data:
        return tensors, None, order
    keys = _SafeUnpickler(f, path).load()
    if not isinstance(keys, list):
        raise TypeError("the list of storage keys is missing")
    remaining = os.fstat(f.fileno()).st_size - f.tell()
    raw: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in storages.dtypes:
            raise ValueError(f"data for unknown storage {_short(key, 20)}")
        header = f.read(8)
        numel = int.from_bytes(header, "little" if little else "big", signed=True)
        nbytes = numel * _itemsize(storages.dtypes[key])
        remaining -= 8 + nbytes
        if len(header) != 8 or nbytes < 0 or remaining < 0:
            raise UsageError(f"{path} is truncated (storage {_short(key, 20)})")
        raw[key] = np.frombuffer(f.read(nbytes), np.uint8)  # _to_array checks the size
    return tensors, raw, order


def _read_entry(zf: zipfile.ZipFile, name: str, nbytes: int, path: str) -> bytes:
    """Exactly ``nbytes`` from the start of archive entry ``name``."""
    try:
        with zf.open(name) as src:
            data = src.read(nbytes)
    except KeyError:  # no such entry
        data = b""
    if len(data) != nbytes:
        raise UsageError(f"{path} is truncated or corrupt: entry {name} is missing or short")
    return data


def _parse_zip(f: BinaryIO, path: str, with_data: bool) -> _Parsed:
    with zipfile.ZipFile(f) as zf:
        infos = {info.filename: info for info in zf.infolist()}
        pickles = [n for n in infos if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise UsageError(f"{path} is a zip file but not a torch.save archive")
        prefix = pickles[0][: -len("data.pkl")]
        text = zf.read(prefix + "byteorder")[:16].strip() if prefix + "byteorder" in infos else b""
        order = {b"": "<", b"little": "<", b"big": ">"}[text]  # KeyError: corrupt
        size = infos[pickles[0]].file_size
        if size > _MAX_PICKLE_BYTES:
            raise UsageError(f"{path}: its data.pkl is implausibly large")
        storages = _Storages(path)
        main = io.BytesIO(_read_entry(zf, pickles[0], size, path))
        tensors = _flatten(_SafeUnpickler(main, path, storages).load(), path)
        if not with_data:
            return tensors, None, order
        raw = {}
        for key, dtype in storages.dtypes.items():
            nbytes = storages.numels[key] * _itemsize(dtype)
            data = _read_entry(zf, f"{prefix}data/{key}", nbytes, path)
            raw[key] = np.frombuffer(data, np.uint8)
        return tensors, raw, order


def _parse(path: str, with_data: bool) -> _Parsed:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            f.seek(0)
            if head.startswith(b"PK\x03\x04"):
                return _parse_zip(f, path, with_data)
            if head[257:262] == b"ustar":
                raise UsageError(f"{path} is an old tar-format torch file, which is not supported")
            if not head.startswith(b"\x80"):
                raise UsageError(f"{path} is not a torch.save file")
            return _parse_legacy(f, path, with_data)
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"weight file {path} does not exist") from None
    except Exception as exc:  # whatever a corrupt file makes the parsers raise
        raise UsageError(
            f"{path} is corrupt or not a torch.save file ({type(exc).__name__}: {_short(exc)})"
        ) from exc


def keys(path: str | os.PathLike) -> list[str]:
    """Names of the tensors in a ``torch.save`` file, reading only its pickle."""
    tensors, _, _ = _parse(os.fspath(path), with_data=False)
    return list(tensors)


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every tensor in a ``torch.save`` file as a numpy array.

    Nested containers are flattened: ``{"state_dict": {"a": t}}`` gives
    ``{"state_dict.a": t}``, list items are named by index, non-tensor values
    (epochs, strings, ...) are skipped. bfloat16 tensors come back as float32.

    Raises:
      UsageError: the file is missing, corrupt, truncated, not a ``torch.save``
        file, or asks for any Python global outside the whitelist.
    """
    path = os.fspath(path)
    tensors, raw, order = _parse(path, with_data=True)
    assert raw is not None
    out = {}
    try:
        for name, tensor in tensors.items():
            if tensor.storage.key not in raw:
                raise UsageError(f"{path} is truncated: no data for tensor {name}")
            out[name] = _to_array(tensor, raw[tensor.storage.key], order)
    except (ValueError, MemoryError) as exc:
        raise UsageError(f"{path} is corrupt ({_short(exc)})") from exc
    return out
