"""Process-wide settings, applied by the entry points (never at import).

:func:`setup` applies nstjax's defaults:

* XLA flags (:mod:`nstjax.xla_flags`), glibc malloc options (:mod:`nstjax.malloc`) and
  one thread for NumPy's BLAS (:func:`numpy_blas_threads`);
* synchronous dispatch on CPU (:func:`cpu_sync_dispatch`);
* JAX's persistent compilation cache in ``<nstjax cache>/xla`` (beside the weights;
  ``$NSTJAX_CACHE``, else ``$XDG_CACHE_HOME/nstjax``, else ``~/.cache/nstjax``), so a
  second run of the same shapes compiles nothing: the step program, targets, final
  losses, Winograd kernel transforms and the fast network are all read back.
  ``NSTJAX_COMPILE_CACHE=0`` turns it off, ``NSTJAX_COMPILE_CACHE=DIR`` moves it;
  ``nstjax cache clear`` empties it. An entry written only in part (a run stopped
  while writing it) is removed when JAX fails to read it, and written again
  (:func:`remove_unreadable_entries`).

The ``nstjax`` command, ``python -m nstjax.main`` and the benchmarks call it first;
library users who want the same call ``nstjax.setup()`` before running any JAX code
(the flags only take effect before JAX starts its backend, the malloc options before
XLA's threads allocate).
"""

from __future__ import annotations

import glob
import importlib
import os
import re
import shutil
import sys
import warnings
import zlib
from pathlib import Path

from nstjax import malloc, xla_flags

_DONE: dict = {}


def compile_cache_dir(environ=os.environ) -> Path:
    """:func:`nstjax.weights.cache.compile_cache_dir` (imported when called: it needs
    numpy, which the CLI's start does not)."""
    from nstjax.weights import cache  # noqa: PLC0415

    return cache.compile_cache_dir(environ)


def enable_compile_cache(environ=os.environ) -> str | None:
    """Points JAX's persistent compilation cache at nstjax's cache (every program,
    however fast it compiled). Returns the directory, or None when turned off."""
    if environ.get("NSTJAX_COMPILE_CACHE", "1") == "0":
        return None
    import jax  # noqa: PLC0415

    from nstjax.weights import cache  # noqa: PLC0415

    path = cache.make_dir(compile_cache_dir(environ))
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _heal_on_read_errors(path)
    return str(path)


# JAX's warning when an entry cannot be read back: the entry's module name is all it names.
_READ_ERROR = re.compile(r"Error reading persistent compilation cache entry for '([\w.-]+)'")


def _readable(data: bytes) -> bool:
    """True if some decompressor JAX may have written ``data`` with reads all of it
    (JAX compresses entries with zstd where a zstd module is installed, else zlib)."""
    decompressors = [zlib.decompress]
    zstd_frame = data[:4] == b"\x28\xb5\x2f\xfd"
    for name in ("compression.zstd", "zstandard"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if name == "zstandard":
            decompressors.append(module.ZstdDecompressor().decompress)
        else:
            decompressors.append(module.decompress)
    if zstd_frame and len(decompressors) == 1:  # another Python's entry: not ours to judge
        return True
    for decompress in decompressors:
        try:
            decompress(data)
            return True
        except Exception:  # noqa: BLE001, S112  (each module raises its own error)
            continue
    return False


def remove_unreadable_entries(path: Path, module: str) -> list[str]:
    """Removes the cache entries of JAX module ``module`` under ``path`` that no
    decompressor reads whole; returns their file names.

    JAX writes an entry in place and never overwrites one, so an entry cut short (a run
    killed while writing it) was read, warned about and compiled again by every later
    run. Removed, it is written whole by the run that found it. An entry another process
    is still writing may be removed too: the file being written vanishes and this run
    writes the entry itself."""
    removed = []
    key = "[0-9a-f]" * 64  # JAX's key: the module's name, then a SHA-256 in hex
    for entry in sorted(path.glob(f"{glob.escape(module)}-{key}-cache")):
        try:
            if _readable(entry.read_bytes()):
                continue
            entry.unlink()
        except OSError:
            continue
        removed.append(entry.name)
    return removed


def _heal_on_read_errors(path: Path) -> None:
    """Has JAX's warning about an unreadable cache entry remove that module's unreadable
    entries, in one line instead of the warning (which each later run would repeat)."""
    previous = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        match = _READ_ERROR.search(str(message))
        removed = remove_unreadable_entries(path, match.group(1)) if match else []
        if not removed:
            return previous(message, category, filename, lineno, file, line)
        print(f"nstjax: removed {len(removed)} unreadable compilation cache "
              f"entr{'y' if len(removed) == 1 else 'ies'} of {match.group(1)} (written in "
              "part: by a run that was stopped, or one still writing); compiled again",
              file=sys.stderr)  # fmt: skip
        return None

    warnings.showwarning = showwarning


def clear_compile_cache(environ=os.environ) -> tuple[str, int]:
    """Removes the compilation cache; returns (directory, bytes freed)."""
    path = compile_cache_dir(environ)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
    shutil.rmtree(path, ignore_errors=True)
    return str(path), size


def cpu_sync_dispatch(environ=os.environ) -> bool:
    """Makes XLA:CPU run each program to completion before the call returns (JAX's
    ``jax_cpu_enable_async_dispatch=False``); True if set. ``NSTJAX_ASYNC_DISPATCH=1``
    keeps JAX's default.

    With asynchronous dispatch the optimization loop (:class:`nstjax.optim.ChunkRunner`,
    ``loop="host"``) enqueues the next step while the previous one still runs, and
    XLA:CPU allocates the next execution's scratch buffer (95 MiB at 256x192, 360 MiB at
    512x384) before the previous one's is freed. glibc's heap, which nstjax keeps instead
    of returning it (:mod:`nstjax.malloc`), then grows to hold both, now and then,
    for the rest of the run. Dispatching synchronously caps it at one: in steady
    256x192 steps (scratch script, four 20-step chunks, alternated) the process peaked
    at 1,142 MiB against 1,233-1,334 MiB, at 512x384 at 1,819-1,838 against 2,384 MiB,
    with no measurable change in step time (256x192, five alternated pairs of
    processes: medians 0.201 against 0.209 s a step, best 0.190 against 0.191 s).
    Only programs on one device are affected: sharded sweeps dispatch as before. Must
    run before JAX starts its CPU backend.
    """
    if environ.get("NSTJAX_ASYNC_DISPATCH", "0") == "1":
        return False
    import jax  # noqa: PLC0415

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def numpy_blas_threads(environ=os.environ) -> str | None:
    """One thread for NumPy's OpenBLAS (``OPENBLAS_NUM_THREADS=1``) unless set, if NumPy
    is not imported yet; returns the value in force, or None. nstjax's arrays are
    computed by XLA, whose threads NumPy's idle BLAS threads competed with: they spin
    after start-up, and a warm fast-network command (``nstjax.bare``) spent 0.70-0.77
    CPU-seconds with them against 0.53-0.63 without (5 alternated runs each, 2-core
    AVX2 EPYC; wall 0.57-0.66 against 0.56-0.62 s)."""
    if "numpy" in sys.modules:
        return None
    return environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def setup(environ=os.environ, with_jax: bool = True) -> dict:
    """Applies the process defaults once; returns what was applied. ``with_jax=False``
    applies those that need no JAX (XLA flags, malloc), so that a command that may run
    without JAX (:mod:`nstjax.bare`) does not import it; a later call applies the rest."""
    if "xla_flags" not in _DONE:
        _DONE["xla_flags"] = xla_flags.apply(environ)
        _DONE["malloc"] = malloc.apply(environ)
        _DONE["numpy_blas_threads"] = numpy_blas_threads(environ)
    if with_jax and "compile_cache" not in _DONE:
        _DONE["cpu_sync_dispatch"] = cpu_sync_dispatch(environ)
        _DONE["compile_cache"] = enable_compile_cache(environ)
    return dict(_DONE)
