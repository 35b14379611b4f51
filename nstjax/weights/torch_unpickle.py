"""The pickle side of reading ``torch.save`` files without torch (see
:mod:`nstjax.weights.torch_pickle` for the containers and the budgets).

:class:`_SafeUnpickler` resolves only an explicit whitelist (``collections.OrderedDict``,
torch's tensor-rebuild functions, storage classes, dtypes) to inert stand-ins defined
here, so a file cannot make the reader run code; every pickle is scanned op by op
(:mod:`pickletools`) before it is unpickled (size, op count, memo indices), and tensors
are described by (storage, offset, size, stride) until :func:`_to_array` copies them
out with bounds checks.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import pickle
import pickletools
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from nstjax.errors import UsageError
from nstjax.vgg import PARAM_SHAPES

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_MAX_DEPTH = 64  # nesting of dicts/lists in the main pickle
_MAX_VISITS = 1_000_000  # containers and leaves walked when flattening
_MAX_PICKLE_BYTES = 1 << 22  # one pickle (a VGG19 state dict's is a few KiB)
_MAX_PICKLE_OPS = 200_000  # pickle ops per pickle (each makes at most ~100 bytes)
_MAX_EXPANSION = 1 << 24  # elements a stride-0 tensor may have beyond its storage
_MAX_ALIASED_BYTES = 1 << 24  # tensor bytes allowed beyond twice the storages' bytes
_MAX_INFLATION = 16  # zip: storage bytes read per byte of archive
_INFLATION_SLACK = 1 << 20  # ... plus this much
_CHUNK = 1 << 20  # bytes per read from a zip entry

CLASSIFIER_SHAPES = ((4096, 25088), (4096,), (4096, 4096), (4096,), (1000, 4096), (1000,))
"""torchvision's VGG19 classifier (Keras's fc1, fc2, predictions hold as many numbers)."""
VGG19_FEATURE_BYTES = 4 * sum(
    math.prod(shape) for shapes in PARAM_SHAPES.values() for shape in shapes.values()
)
"""float32 bytes of VGG19's conv layers (about 76 MiB)."""
CLASSIFIER_BYTES = 4 * sum(map(math.prod, CLASSIFIER_SHAPES))
"""float32 bytes of its classifier head (about 472 MiB)."""
MAX_BYTES = 2 * VGG19_FEATURE_BYTES + CLASSIFIER_BYTES
"""Default budget for a file's storages and for its tensors (about 625 MiB): room for
torchvision's whole ``vgg19-dcbb9e9d.pth`` (548 MiB with its classifier) or for the
conv layers twice over, e.g. in float64."""

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


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


class _Capped:
    """At most the next ``limit`` bytes of a file, keeping a copy of what was read."""

    def __init__(self, f: BinaryIO, limit: int):
        self._f, self._left = f, limit
        self.data = bytearray()

    @property
    def exhausted(self) -> bool:
        return self._left <= 0

    def _take(self, chunk: bytes) -> bytes:
        self._left -= len(chunk)
        self.data += chunk
        return chunk

    def _limit(self, n: int | None) -> int:
        return self._left if n is None or n < 0 else min(n, self._left)

    def read(self, n: int | None = -1) -> bytes:
        return self._take(self._f.read(self._limit(n)))

    def readline(self, n: int | None = -1) -> bytes:
        return self._take(self._f.readline(self._limit(n)))


_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _read_pickle(f: BinaryIO, path: str) -> io.BytesIO:
    """The next pickle in ``f`` (left just past it), scanned before anything unpickles it."""
    capped = _Capped(f, _MAX_PICKLE_BYTES)
    ops = 0
    try:
        for opcode, arg, _ in pickletools.genops(capped):
            ops += 1
            if ops > _MAX_PICKLE_OPS:
                raise UsageError(
                    f"refusing to load {path}: it holds a pickle of more than "
                    f"{_MAX_PICKLE_OPS} ops, which no weight file needs"
                )
            if opcode.name in _MEMO_OPS and not 0 <= arg <= ops:
                raise UsageError(
                    f"refusing to load {path}: its pickle stores memo entry "
                    f"{_short(arg, 20)} after {ops} ops"
                )
    except ValueError:  # what genops raises on a short or malformed pickle
        if capped.exhausted:
            raise UsageError(
                f"refusing to load {path}: it holds a pickle larger than "
                f"{_mib(_MAX_PICKLE_BYTES)}, which no weight file needs"
            ) from None
        raise
    return io.BytesIO(bytes(capped.data))


def _unpickle(f: BinaryIO, path: str, storages: _Storages | None = None) -> Any:
    return _SafeUnpickler(_read_pickle(f, path), path, storages).load()


def _extent(tensor: _Tensor, storage_nbytes: int) -> int:
    """Elements of ``tensor``, checked to lie inside a storage of ``storage_nbytes`` bytes."""
    ref = tensor.storage
    start = ref.offset * _itemsize(ref.dtype)
    stop = start + ref.numel * _itemsize(ref.dtype)
    if stop > storage_nbytes:
        raise ValueError(f"storage {ref.key} holds {storage_nbytes} bytes, {stop} needed")
    count = (stop - start) // _itemsize(tensor.dtype)
    total = math.prod(tensor.size)
    if total:
        last = tensor.offset + sum(
            (n - 1) * s for n, s in zip(tensor.size, tensor.stride, strict=True)
        )
        if last >= count or total > max(count, _MAX_EXPANSION):
            raise ValueError(f"a tensor reaches outside its storage {ref.key}")
    return total


def _to_array(tensor: _Tensor, raw: np.ndarray, order: str) -> np.ndarray:
    """Copies ``tensor`` out of its storage's bytes ``raw`` (uint8), bounds-checked."""
    total = _extent(tensor, raw.size)
    ref = tensor.storage
    start = ref.offset * _itemsize(ref.dtype)
    dtype = np.dtype(order + _DTYPES[tensor.dtype])
    count = ref.numel * _itemsize(ref.dtype) // dtype.itemsize
    native = dtype.newbyteorder("=")
    if total == 0:
        out = np.zeros(tensor.size, native)
    else:
        elements = raw[start : start + count * dtype.itemsize].view(dtype)
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
