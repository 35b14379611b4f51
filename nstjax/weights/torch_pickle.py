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

import contextlib
import io
import os
import zipfile
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

import numpy as np

from nstjax.errors import UsageError
from nstjax.weights.torch_unpickle import (
    _CHUNK,
    _INFLATION_SLACK,
    _MAX_ALIASED_BYTES,
    _MAX_INFLATION,
    _MAX_PICKLE_BYTES,
    MAGIC_NUMBER,
    MAX_BYTES,
    PROTOCOL_VERSION,
    _extent,
    _flatten,
    _itemsize,
    _mib,
    _short,
    _Storages,
    _Tensor,
    _to_array,
    _unpickle,
)


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
