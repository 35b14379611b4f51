"""Weights on disk that are used in place: an aligned ``.npz``, mapped, and released.

The weight cache (:mod:`nstjax.weights.cache`) writes each entry with :func:`write`: a
plain uncompressed ``.npz`` (``numpy.load`` reads it as any other) whose arrays start at
64-byte offsets in the file. :func:`map_arrays` then maps the file read-only and returns
the arrays as views of the mapping: no copy when they are read, and none when they reach
XLA:CPU, which adopts 64-byte-aligned host memory as it is (``jax.device_put``).

The pages are the file's: :func:`release` drops them from the process's memory once a
run holds what it derived from them (the Winograd transforms of the kernels, the
targets), and the next read of an array faults them back in from the page cache. On the
Gatys step at 256x192 that takes VGG19's raw kernels to relu5_1 (52 MiB) out of the
steps' peak memory, and copying them out of ``numpy.load`` (0.3-0.5 s) out of every run.

Nothing here trusts the file's layout: every member must be stored (not compressed), a
little-endian float32 C-order ``.npy`` whose data lie inside the file, or
:func:`map_arrays` returns None and the caller reads the file with ``numpy.load``.
"""

from __future__ import annotations

import io
import mmap
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

ALIGN = 64  # bytes: XLA:CPU adopts a host array without a copy only at this alignment
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra length
_PAD_FIELD = 0x4E58  # the extra field that aligns a member's data ("NX"; ignored by readers)
_DTYPE = np.dtype("<f4")


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def write(f, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes ``arrays`` to the binary file ``f`` as an uncompressed ``.npz`` whose array
    data start at multiples of :data:`ALIGN` bytes (``numpy.load`` reads it as usual).

    Each member's local header gets an extra field of padding; NumPy pads the ``.npy``
    header itself to 64 bytes, so the array data are aligned when the member's are.
    """
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for name, a in arrays.items():
            data = _npy_bytes(a)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            start = f.tell() + _LOCAL_HEADER.size + len(info.filename.encode()) + 4
            pad = -start % ALIGN
            info.extra = struct.pack("<HH", _PAD_FIELD, pad) + bytes(pad)
            zf.writestr(info, data)


def _member(mm: mmap.mmap, info: zipfile.ZipInfo) -> np.ndarray | None:
    """The array of one member as a view of ``mm``, or None when it cannot be one."""
    if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
        return None
    at = info.header_offset
    if at < 0 or at + _LOCAL_HEADER.size > len(mm):
        return None
    signature, name_len, extra_len = _LOCAL_HEADER.unpack_from(mm, at)
    if signature != b"PK\x03\x04":
        return None
    start = at + _LOCAL_HEADER.size + name_len + extra_len
    end = start + info.file_size
    if end > len(mm):
        return None
    head = io.BytesIO(mm[start : min(end, start + 4096)])
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        else:
            return None
    except ValueError:
        return None
    count = int(np.prod(shape, dtype=np.int64))
    offset = start + head.tell()
    if fortran or dtype != _DTYPE or offset + count * _DTYPE.itemsize != end:
        return None
    if offset % ALIGN:  # written by numpy.savez: the caller copies it to aligned memory
        return None
    return np.frombuffer(mm, _DTYPE, count, offset).reshape(shape)


def map_arrays(f) -> dict[str, np.ndarray] | None:
    """``{name: array}`` of the ``.npz`` open as ``f`` (binary, seekable), each a
    read-only view of a read-only mapping of the file; None if any member cannot be
    mapped (compressed, not float32, unaligned, inconsistent): read it another way."""
    try:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty file, or no mapping here
        return None
    try:
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    out = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            return None
        a = _member(mm, info)
        if a is None:
            return None
        out[info.filename[: -len(".npy")]] = a
    return out


def _mapping(a: np.ndarray) -> mmap.mmap | None:
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def release(tree) -> int:
    """Drops the resident pages of the mapped arrays in the pytree ``tree`` (other leaves
    are skipped); they are read again from the file when next touched. Returns the bytes
    released (whole pages inside the arrays)."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return 0
    import jax  # noqa: PLC0415  (reading weights needs no JAX: nstjax.bare)

    leaves = [a for a in jax.tree.leaves(tree) if isinstance(a, np.ndarray)]
    released = 0
    bases: dict[int, int] = {}  # id(mapping) -> its address
    for a in leaves:
        mm = _mapping(a)
        if mm is None or not a.nbytes:
            continue
        if id(mm) not in bases:
            bases[id(mm)] = np.frombuffer(mm, np.uint8).ctypes.data
        lo = a.ctypes.data - bases[id(mm)]
        hi = lo + a.nbytes
        lo = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE
        hi = hi // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            mm.madvise(advice, lo, hi - lo)
            released += hi - lo
    return released
