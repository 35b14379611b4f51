"""glibc ``malloc`` settings for XLA:CPU, applied when nstjax is imported.

XLA:CPU allocates each execution's large buffers afresh. With glibc's defaults, large
blocks come from ``mmap`` and go back to the kernel when freed, and worker threads
allocate from their own arenas, which are trimmed too; so every optimization step
page-faults and zero-fills hundreds of MiB again. Keeping freed memory in one heap
(one arena, no ``mmap`` for large blocks, no trimming) removes that: measured on the
2-core machine, one Winograd VGG layer went from 84-90 to 40-45 ms, and an XLA-convolution
Gatys value+grad at 256x256 from 0.87 to 0.80 s (``benchmarks/conv_speed.py --impls xla``).
The cost is that the process keeps its peak heap until it exits, unless
:func:`trim` gives it back: a single run calls it once its steps are done, before the
distance panel (whose programs load into memory of their own, beside the heap).

Applied only on Linux with glibc, before JAX starts its threads (the settings cover
arenas created afterwards), so import nstjax before running JAX code. Opt out with
``NSTJAX_MALLOC_DEFAULTS=0``; the equivalent environment variables
(``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``) work too.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def apply(environ=os.environ) -> bool:
    """Sets :data:`SETTINGS` with ``mallopt``; True if all were accepted."""
    if environ.get("NSTJAX_MALLOC_DEFAULTS", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    libc = _libc()  # glibc only: musl has no mallopt settings
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)


def _libc():
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


def trim() -> bool:
    """Gives the heap's free memory back to the kernel (glibc's ``malloc_trim(0)``, which
    also releases free pages inside the heap); True if it released any. Meant for the
    end of the steps: the next steps would fault those pages in again."""
    libc = _libc() if sys.platform.startswith("linux") else None
    if libc is None:
        return False
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    libc.malloc_trim.restype = ctypes.c_int
    return libc.malloc_trim(0) == 1
