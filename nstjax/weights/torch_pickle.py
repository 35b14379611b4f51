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

Nothing a file declares is allocated before it is checked against what a VGG19
weight file can need (:data:`MAX_BYTES`), so a small hostile file cannot make
this reader exhaust memory:

* each pickle is scanned op by op (:mod:`pickletools`) before it is unpickled:
  at most :data:`_MAX_PICKLE_BYTES` bytes and :data:`_MAX_PICKLE_OPS` ops, and
  no memo index beyond the ops seen (the C unpickler zero-fills its memo up to
  any index a ``LONG_BINPUT`` names: 1 GiB for a 10-byte pickle);
* the storages that tensors use may hold at most ``max_bytes`` in all; in a zip
  archive they may moreover inflate to at most :data:`_MAX_INFLATION` times the
  archive's size, and only stored or deflated entries are read (``zipfile``
  decompresses a bzip2 or lzma block whole, however little is asked of it);
  storages no tensor uses are never read;
* the tensors cut out of them may hold at most ``max_bytes`` in all, and at
  most twice their storages' bytes plus :data:`_MAX_ALIASED_BYTES` (many
  tensors viewing one storage, or stride-0 expansions, cannot multiply it);
* each storage is read into a buffer of its checked size, its tensors are copied
  out, and the buffer is dropped before the next storage is read.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import math
import os
import pickle
import pickletools
import zipfile
from collections.abc import Callable, Iterator
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


class _Plan(NamedTuple):
    """What :func:`load` will read: tensor names per storage key, bytes per storage."""

    tensors: dict[str, list[str]]
    nbytes: dict[str, int]


def _plan(tensors: dict[str, _Tensor], storages: _Storages, path: str, max_bytes: int) -> _Plan:
    """Checks every tensor against its storage's declared size and the budgets.

    Only the pickle has been read so far: nothing is allocated for the data yet.
    """
    by_key: dict[str, list[str]] = {}
    tensor_bytes = out_bytes = 0
    for name, tensor in tensors.items():
        key = tensor.storage.key
        by_key.setdefault(key, []).append(name)
        storage_nbytes = storages.numels[key] * _itemsize(storages.dtypes[key])
        total = _extent(tensor, storage_nbytes)
        itemsize = _itemsize(tensor.dtype)
        tensor_bytes += total * itemsize
        out_bytes += total * (4 if tensor.dtype == "bfloat16" else itemsize)
    nbytes = {key: storages.numels[key] * _itemsize(storages.dtypes[key]) for key in by_key}
    stored = sum(nbytes.values())
    if stored > max_bytes:
        raise UsageError(
            f"refusing to load {path}: its tensors' storages declare {_mib(stored)}, "
            f"more than the {_mib(max_bytes)} a VGG19 weight file may hold"
        )
    if out_bytes > max_bytes:
        raise UsageError(
            f"refusing to load {path}: its tensors would take {_mib(out_bytes)}, "
            f"more than the {_mib(max_bytes)} a VGG19 weight file may hold"
        )
    if tensor_bytes > 2 * stored + _MAX_ALIASED_BYTES:
        raise UsageError(
            f"refusing to load {path}: it makes {_mib(tensor_bytes)} of tensors out of "
            f"{_mib(stored)} of storage (tensors repeating or expanding their storages)"
        )
    return _Plan(by_key, nbytes)


def _cut(
    tensors: dict[str, _Tensor],
    plan: _Plan,
    data: Iterator[tuple[str, np.ndarray]],
    order: str,
    path: str,
) -> dict[str, np.ndarray]:
    """Copies the tensors out of each storage as it arrives; each storage is then dropped."""
    arrays: dict[str, np.ndarray] = {}
    for key, raw in data:
        for name in plan.tensors.get(key, ()):
            arrays[name] = _to_array(tensors[name], raw, order)
        del raw
    for name in tensors:
        if name not in arrays:
            raise UsageError(f"{path} is truncated: no data for tensor {name}")
    return {name: arrays[name] for name in tensors}


def _legacy_main(f: BinaryIO, path: str) -> tuple[dict[str, _Tensor], _Storages, str]:
    if _unpickle(f, path) != MAGIC_NUMBER:
        raise UsageError(f"{path} is not a torch.save file (bad magic number)")
    version = _unpickle(f, path)
    if version != PROTOCOL_VERSION:
        raise UsageError(f"{path}: unsupported torch.save protocol {_short(version, 20)}")
    sys_info = _unpickle(f, path)
    little = not (isinstance(sys_info, dict) and sys_info.get("little_endian") is False)
    storages = _Storages(path)
    tensors = _flatten(_unpickle(f, path, storages), path)
    return tensors, storages, "<" if little else ">"


def _legacy_data(
    f: BinaryIO, path: str, storages: _Storages, plan: _Plan, order: str, max_bytes: int
) -> Iterator[tuple[str, np.ndarray]]:
    """(key, bytes) of each storage a tensor uses, in file order; the others are skipped."""
    keys = _unpickle(f, path)
    if not isinstance(keys, list):
        raise TypeError("the list of storage keys is missing")
    remaining = os.fstat(f.fileno()).st_size - f.tell()
    read = 0
    for key in keys:
        if key not in storages.dtypes:
            raise ValueError(f"data for unknown storage {_short(key, 20)}")
        header = f.read(8)
        numel = int.from_bytes(header, "little" if order == "<" else "big", signed=True)
        nbytes = numel * _itemsize(storages.dtypes[key])
        remaining -= 8 + nbytes
        if len(header) != 8 or nbytes < 0 or remaining < 0:
            raise UsageError(f"{path} is truncated (storage {_short(key, 20)})")
        if key not in plan.tensors:
            f.seek(nbytes, io.SEEK_CUR)
            continue
        read += nbytes
        if read > max_bytes:
            raise UsageError(
                f"refusing to load {path}: its storages hold more than the "
                f"{_mib(max_bytes)} a VGG19 weight file may hold"
            )
        yield key, np.frombuffer(f.read(nbytes), np.uint8)  # _to_array checks the size


_COMPRESSIONS = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int, path: str) -> bytearray:
    """Exactly ``nbytes`` from the start of an archive entry, read into a buffer that size.

    Only stored and deflated entries are read: ``zipfile`` inflates those at most as
    far as asked, but decompresses a whole bzip2 or lzma block at once.
    """
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        method = _COMPRESSIONS.get(info.compress_type, f"method {info.compress_type}")
        raise UsageError(
            f"refusing to load {path}: its entry {_short(info.filename, 60)} is compressed "
            f"with {method}, which torch.save never writes"
        )
    if info.file_size < nbytes:
        raise UsageError(f"{path} is truncated or corrupt: entry {info.filename} is short")
    buf = bytearray(nbytes)
    view = memoryview(buf)
    done = 0
    with zf.open(info) as src:
        while done < nbytes:
            got = src.readinto(view[done : done + _CHUNK])
            if not got:
                break
            done += got
    if done != nbytes:
        raise UsageError(f"{path} is truncated or corrupt: entry {info.filename} is short")
    return buf


def _zip_main(
    zf: zipfile.ZipFile, path: str
) -> tuple[dict[str, _Tensor], _Storages, str, dict[str, zipfile.ZipInfo]]:
    """Tensors, storages and byte order of a zip archive; the infos of its storages' entries."""
    infos = {info.filename: info for info in zf.infolist()}
    pickles = [n for n in infos if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise UsageError(f"{path} is a zip file but not a torch.save archive")
    prefix = pickles[0][: -len("data.pkl")]
    info = infos.get(prefix + "byteorder")
    text = bytes(_read_entry(zf, info, min(info.file_size, 16), path)) if info else b""
    order = {b"": "<", b"little": "<", b"big": ">"}[text.strip()]  # KeyError: corrupt
    info = infos[pickles[0]]
    if info.file_size > _MAX_PICKLE_BYTES:
        raise UsageError(
            f"refusing to load {path}: its data.pkl is larger than "
            f"{_mib(_MAX_PICKLE_BYTES)}, which no weight file needs"
        )
    storages = _Storages(path)
    main = io.BytesIO(_read_entry(zf, info, info.file_size, path))
    tensors = _flatten(_unpickle(main, path, storages), path)
    data_infos = {
        name[len(prefix) + 5 :]: i for name, i in infos.items() if name.startswith(prefix + "data/")
    }
    return tensors, storages, order, data_infos


def _zip_data(
    zf: zipfile.ZipFile,
    infos: dict[str, zipfile.ZipInfo],
    plan: _Plan,
    path: str,
    archive_size: int,
) -> Iterator[tuple[str, np.ndarray]]:
    """(key, bytes) of each storage a tensor uses, all checked before the first is read."""
    for key, nbytes in plan.nbytes.items():
        if key not in infos:
            raise UsageError(f"{path} is truncated or corrupt: no entry for storage {key}")
        if infos[key].file_size < nbytes:
            raise UsageError(f"{path} is truncated or corrupt: entry for storage {key} is short")
    total = sum(plan.nbytes.values())
    if total > _MAX_INFLATION * archive_size + _INFLATION_SLACK:
        raise UsageError(
            f"refusing to load {path}: its storages declare {_mib(total)} in a "
            f"{_mib(archive_size)} archive, which no weight file inflates to"
        )
    for key, nbytes in plan.nbytes.items():
        yield key, np.frombuffer(_read_entry(zf, infos[key], nbytes, path), np.uint8)


def _kind(f: BinaryIO, path: str) -> str:
    """``"zip"`` or ``"legacy"``; raises UsageError for anything else."""
    head = f.read(512)
    f.seek(0)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[257:262] == b"ustar":
        raise UsageError(f"{path} is an old tar-format torch file, which is not supported")
    if not head.startswith(b"\x80"):
        raise UsageError(f"{path} is not a torch.save file")
    return "legacy"


@contextlib.contextmanager
def _errors(path: str) -> Iterator[None]:
    """Turns whatever a missing or corrupt file makes the parsers raise into UsageError."""
    try:
        yield
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"weight file {path} does not exist") from None
    except Exception as exc:
        raise UsageError(
            f"{path} is corrupt or not a torch.save file ({type(exc).__name__}: {_short(exc)})"
        ) from exc


def keys(path: str | os.PathLike) -> list[str]:
    """Names of the tensors in a ``torch.save`` file, reading only its pickle."""
    path = os.fspath(path)
    with _errors(path), open(path, "rb") as f:
        if _kind(f, path) == "zip":
            with zipfile.ZipFile(f) as zf:
                return list(_zip_main(zf, path)[0])
        return list(_legacy_main(f, path)[0])


def load(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """Reads every tensor in a ``torch.save`` file as a numpy array.

    Nested containers are flattened: ``{"state_dict": {"a": t}}`` gives
    ``{"state_dict.a": t}``, list items are named by index, non-tensor values
    (epochs, strings, ...) are skipped. bfloat16 tensors come back as float32.

    Args:
      path: the file.
      max_bytes: budget for the storages the tensors use, and again for the
        tensors themselves (see the module docstring); checked before any of
        the data is read.

    Raises:
      UsageError: the file is missing, corrupt, truncated, not a ``torch.save``
        file, asks for any Python global outside the whitelist, or declares more
        data than the budgets allow.
    """
    path = os.fspath(path)
    with _errors(path), open(path, "rb") as f:
        if _kind(f, path) == "zip":
            with zipfile.ZipFile(f) as zf:
                tensors, storages, order, infos = _zip_main(zf, path)
                plan = _plan(tensors, storages, path, max_bytes)
                size = os.fstat(f.fileno()).st_size
                return _cut(tensors, plan, _zip_data(zf, infos, plan, path, size), order, path)
        tensors, storages, order = _legacy_main(f, path)
        plan = _plan(tensors, storages, path, max_bytes)
        data = _legacy_data(f, path, storages, plan, order, max_bytes)
        return _cut(tensors, plan, data, order, path)
