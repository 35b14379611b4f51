"""Stored XLA:CPU programs run by jaxlib's runtime alone, without importing JAX.

``import jax`` takes 0.5-0.75 s on the 2-core CPUs here (its Python modules), while
jaxlib's runtime, which runs compiled programs, loads in 0.15 s. A warm fast-network
command runs two stored programs for about 0.1 s, so JAX's import was most of it
(issue 14). A *bare record* is one compiled CPU program as jaxlib serializes it, with
what a call needs without JAX: the key path of every argument leaf it reads (JAX drops
the unused ones), their shapes and dtypes, and the outputs' shapes and dtypes.
:class:`nstjax.aot.Jit` writes one beside a program's whole executable when the program
asks for it (``bare=NAME``) and runs on CPU; :class:`Runtime` calls it::

    rt = Runtime()
    exe, header = rt.load(record)           # record: read(key(...))
    outputs = rt.call(exe, header, leaves)  # leaves: {"0/transform/Conv/kernel": array, ...}

The key (:func:`key`) is a SHA-256 of the program's name, its static arguments'
``repr``, every dynamic leaf's path, shape and dtype, and :func:`environment`: the
package source, jaxlib and JAX (its version file), the CPU's features, ``XLA_FLAGS``
and every ``JAX_*`` variable. Where JAX could pick another backend (a GPU or TPU
plugin is installed and ``JAX_PLATFORMS`` is not ``cpu``) there is no key, and records
are only written by a process whose backend is CPU with JAX's default settings.
Records are checked by SHA-256 before anything is handed to jaxlib (a damaged one is
deleted) and live in the user's own compile cache (``<compile cache>/nstjax-bare``,
created 0o700), which, like JAX's, holds machine code and must be trusted.

jaxlib's runtime is private API: the calls here are ``Client.deserialize_executable``,
``LoadedExecutable.execute_sharded``, ``batched_device_put``, ``array_result_handler``
and ``buffer_to_dlpack_managed_tensor`` (jaxlib 0.10.2). JAX adds Python methods to
jaxlib's ``SingleDeviceSharding`` when it is imported; :class:`Runtime` adds the four
that a transfer reads, and JAX's import replaces them. A record of another jaxlib has
another key; any failure raises :class:`BareError`, and the caller runs the JAX path.
``NSTJAX_BARE=0`` turns this off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nstjax import atomic, xla_flags
from nstjax.errors import NstError
from nstjax.weights import cache

MAGIC = b"nstjax-bare-1\n"
SUBDIR = "nstjax-bare"
_PLUGIN_PREFIXES = ("jax_plugins", "libtpu", "jax_cuda", "jax_rocm", "jax_tpu", "jax_metal")


class BareError(Exception):
    """A stored program cannot run without JAX here (the caller takes the JAX path)."""


@functools.cache
def source_fingerprint() -> str:
    """SHA-256 of every ``.py`` file of the package (path and bytes)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def store_directory(subdir: str, environ=os.environ, switch: str | None = None) -> Path | None:
    """``<compile cache>/subdir``, or None when ``NSTJAX_COMPILE_CACHE``, ``NSTJAX_AOT``
    or ``switch`` is 0 (the stores of :mod:`nstjax.aot` and of this module)."""
    switches = ("NSTJAX_COMPILE_CACHE", "NSTJAX_AOT", *([switch] if switch else []))
    if any(environ.get(v, "1") == "0" for v in switches):
        return None
    return cache.compile_cache_dir(environ) / subdir


def directory(environ=os.environ) -> Path | None:
    """Where bare records are kept, or None when they are off."""
    return store_directory(SUBDIR, environ, "NSTJAX_BARE")


def seal(magic: bytes, payload: bytes) -> bytes:
    """A stored file: ``magic``, the payload's SHA-256, the payload (see :func:`unseal`)."""
    return magic + hashlib.sha256(payload).digest() + payload


def unseal(magic: bytes, data: bytes) -> bytes | None:
    """The payload of a :func:`seal` ed file, or None when it is not one or is damaged
    (its SHA-256 does not match: never hand such bytes to a loader)."""
    head = len(magic) + 32
    payload = data[head:]
    if data.startswith(magic) and hashlib.sha256(payload).digest() == data[len(magic) : head]:
        return payload
    return None


@functools.cache
def _plugins() -> list[str]:
    """Installed packages through which JAX could pick a backend other than CPU (the
    directories of ``sys.path``, not the working directory)."""
    found = set()
    for entry in sys.path:
        if not entry:
            continue
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        found.update(n for n in names if n.startswith(_PLUGIN_PREFIXES))
    return sorted(found)


def _jax_version_file() -> str:
    """SHA-256 of JAX's ``version.py``, found without importing JAX."""
    spec = importlib.util.find_spec("jax")
    if spec is None or spec.origin is None:
        raise BareError("jax is not installed")
    return hashlib.sha256((Path(spec.origin).parent / "version.py").read_bytes()).hexdigest()


def environment(environ=os.environ) -> list[str] | None:
    """What decides a stored program besides its arguments, or None where JAX could
    run on another backend than CPU."""
    if environ.get("JAX_PLATFORMS", "") not in ("", "cpu") or (
        environ.get("JAX_PLATFORMS", "") != "cpu" and _plugins()
    ):
        return None
    from jaxlib import version  # noqa: PLC0415  (jaxlib only: no JAX)

    jax_env = sorted((k, v) for k, v in environ.items() if k.startswith("JAX_"))
    return [
        MAGIC.decode(), source_fingerprint(), version.__version__, _jax_version_file(),
        xla_flags.cpu_features(), environ.get("XLA_FLAGS", ""), repr(jax_env),
    ]  # fmt: skip


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """``{path: leaf}`` of nested dicts, tuples and lists, paths as :func:`key` wants
    them (``"0/transform/Conv/kernel"``: dict keys and sequence indices joined by /)."""
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, (tuple, list)):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def signature(leaves: Mapping[str, object]) -> list[list]:
    """``[[path, shape, dtype], ...]`` of leaves with ``shape`` and ``dtype``, by path."""
    return [[p, list(map(int, a.shape)), str(np.dtype(a.dtype))] for p, a in sorted(leaves.items())]


def key(
    name: str, statics: Sequence, leaves: Mapping[str, object], environ=os.environ
) -> str | None:
    """The record key of program ``name`` called with these static arguments and dynamic
    leaves (:func:`flatten` of the dynamic arguments), or None where there is none (or
    the environment cannot be read: no JAX path to key it by)."""
    try:
        env = environment(environ)
    except (OSError, ImportError, BareError):
        return None
    if env is None:
        return None
    parts = [*env, name, repr(tuple(statics)), json.dumps(signature(leaves))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def write(k: str, header: dict, blob: bytes, environ=os.environ) -> bool:
    """Writes a record (atomically): ``header`` (JSON: ``inputs``, ``outputs``) and the
    serialized executable. False when records are off or it cannot be written."""
    d = directory(environ)
    if d is None:
        return False
    head = json.dumps(header).encode()
    payload = len(head).to_bytes(8, "little") + head + blob
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic.write_bytes(d / f"{k}.bin", seal(MAGIC, payload))
    except (OSError, NstError):  # a full disk, a read-only cache: no record
        return False
    return True


def discard(k: str | None, environ=os.environ) -> None:
    """Deletes record ``k`` (one that did not load or run), so a later run writes it
    again; nothing if it cannot."""
    d = directory(environ)
    if k is not None and d is not None:
        with contextlib.suppress(OSError):
            (d / f"{k}.bin").unlink(missing_ok=True)


def exists(k: str | None, environ=os.environ) -> bool:
    d = directory(environ)
    return k is not None and d is not None and (d / f"{k}.bin").is_file()


def read(k: str | None, environ=os.environ) -> tuple[dict, bytes]:
    """``(header, executable bytes)`` of key ``k``; BareError if absent or damaged (a
    damaged one is deleted)."""
    d = directory(environ)
    if k is None or d is None:
        raise BareError("no record key")
    try:
        data = (d / f"{k}.bin").read_bytes()
    except OSError:
        raise BareError("no record") from None
    payload = unseal(MAGIC, data)
    header = None
    if payload is not None:
        n = int.from_bytes(payload[:8], "little")
        try:
            header = json.loads(payload[8 : 8 + n])
        except (ValueError, RecursionError):
            header = None
    if not _valid(header):
        discard(k, environ)
        raise BareError("damaged record")
    return header, payload[8 + n :]


def _valid(header) -> bool:
    """A header as :func:`nstjax.bare_write.write` writes it: ``inputs`` ``[path, shape,
    dtype]`` and ``outputs`` ``[shape, dtype]``, of plain types."""

    def shape_dtype(shape, dtype):
        ok = isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
        return ok and isinstance(dtype, str)

    try:
        return (
            isinstance(header, dict)
            and all(isinstance(p, str) and shape_dtype(s, d) for p, s, d in header["inputs"])
            and all(shape_dtype(s, d) for s, d in header["outputs"])
        )
    except (KeyError, TypeError, ValueError):
        return False


class _Aval:
    """The shape and dtype that jaxlib's transfers and results read (JAX's ShapedArray)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.ndim, self.size, self.weak_type = len(self.shape), int(np.prod(self.shape)), False


class _Capsule:
    """A device buffer as NumPy's ``from_dlpack`` wants it (CPU memory, no copy)."""

    def __init__(self, array, jaxlib_module):
        self.array, self.jaxlib = array, jaxlib_module

    def __dlpack__(self, stream=None, **kwargs):
        return self.jaxlib.buffer_to_dlpack_managed_tensor(self.array)

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU, device 0


class Runtime:
    """jaxlib's CPU client, one device: loads records and calls them on NumPy arrays."""

    def __init__(self):
        if "jax" in sys.modules:  # JAX's import put its own methods on jaxlib's classes
            raise BareError("JAX is imported")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # as JAX's import does
        try:
            from jaxlib import _jax, xla_client  # noqa: PLC0415

            self._jax = _jax
            self.client = xla_client.make_cpu_client()
            self.device = self.client.devices()[0]
            replicated = xla_client.HloSharding.replicate()
            cls = _jax.SingleDeviceSharding
            cls._to_xla_hlo_sharding = lambda self, ndim: replicated
            cls.is_fully_replicated = property(lambda self: True)
            cls._device_assignment = property(lambda self: (self._device,))
            cls.memory_kind = property(lambda self: self._memory_kind)
            self.sharding = cls(self.device)
        except Exception as e:  # noqa: BLE001  (another jaxlib)
            raise BareError(f"jaxlib's runtime: {e}") from None

    def load(self, record: tuple[dict, bytes]):
        header, blob = record
        try:
            exe = self.client.deserialize_executable(
                blob, executable_devices=self._jax.DeviceList((self.device,))
            )
        except Exception as e:  # noqa: BLE001  (another build's executable)
            raise BareError(f"executable does not load: {e}") from None
        return exe, header

    def call(self, exe, header: dict, leaves: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Runs ``exe`` on the leaves its header names (checked: path, shape, dtype);
        returns its outputs as NumPy arrays."""
        try:
            return self._call(exe, header, leaves)
        except BareError:
            raise
        except Exception as e:  # noqa: BLE001  (another jaxlib, a bad record)
            raise BareError(f"call: {e}") from None

    def _call(self, exe, header: dict, leaves: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args = []
        for path, shape, dtype in header["inputs"]:
            a = leaves.get(path)
            if a is None or list(a.shape) != shape or str(a.dtype) != dtype:
                raise BareError(f"argument {path} does not match the record")
            a = np.ascontiguousarray(a)
            args.append(
                self._jax.batched_device_put(
                    _Aval(a.shape, a.dtype), self.sharding, [a], [self.device], enable_x64=False
                )
            )
        handlers = [
            self._jax.array_result_handler(_Aval(s, d), self.sharding, True, _skip_checks=True)
            for s, d in header["outputs"]
        ]
        outs = exe.execute_sharded(args).consume_with_handlers(handlers)
        return [np.from_dlpack(_Capsule(o, self._jax)) for o in outs]
