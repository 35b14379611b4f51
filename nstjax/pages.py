"""Clean file pages handed back: what a run no longer reads leaves its resident memory.

A process's resident set (RSS, what a user's ``time -v`` or a job scheduler charges)
counts every page of a mapped file that the process has touched, until the kernel
reclaims it. For a run those are mostly shared libraries' code and read-only data:
importing JAX, loading or compiling XLA programs and tracing Python touch 90-120 MiB of
``libjax_common.so`` (a 350 MiB library holding the whole compiler), of which the steps
execute a small part. Measured on a 256 px, 100-step L-BFGS command (2-core AVX2 EPYC,
RSS sampled every 50 ms): a warm run held 710 MiB during its steps, 589 MiB once
:func:`release` ran before them (110 MiB given back, the same step times).

:func:`release` tells the kernel (``madvise(MADV_DONTNEED)``) that the process no longer
needs the pages of every mapping that is read-only and file-backed and has no page of its
own (no dirty or anonymous page: nothing the file does not hold). That is what the
kernel itself does to such pages under memory pressure, so it changes no contents: a
page that is read again is mapped back from the page cache (a minor fault, no disk
read while the file stays cached). Writable mappings, anonymous memory, device files,
deleted files and locked or I/O mappings are left alone. Linux only (elsewhere it does
nothing); the engine calls it before the Winograd kernel transforms, a run's first
memory peak, and before the steps, and each compile child (:mod:`nstjax.child`) before
it compiles (the weights' own mapping is released during the run
by :func:`nstjax.weights.npz_map.release`, array by array). ``NSTJAX_RELEASE_PAGES=0``
turns it off.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

SKIP_FLAGS = frozenset({"lo", "io", "pf", "dd"})
"""``VmFlags`` of mappings left alone: locked, memory-mapped I/O, raw page frames, and
excluded from core dumps (device memory)."""
ENV = "NSTJAX_RELEASE_PAGES"


def mappings(smaps: str = "/proc/self/smaps"):
    """Each mapping of ``smaps``: a dict with ``start``, ``end`` (addresses), ``perms``,
    ``inode``, ``path`` (``""`` when anonymous), ``flags`` (``VmFlags``, a set) and its
    ``kB`` fields (``Rss``, ``Private_Dirty``, ...) as ints."""
    cur = None
    with open(smaps) as f:
        for line in f:
            key, _, rest = line.partition(" ")
            if not key.endswith(":"):  # "start-end perms offset dev inode [path]"
                if cur is not None:
                    yield cur
                fields = line.split(None, 5)
                start, end = (int(x, 16) for x in fields[0].split("-"))
                path = fields[5].rstrip("\n") if len(fields) > 5 else ""
                cur = {"start": start, "end": end, "perms": fields[1], "inode": int(fields[4]),
                       "path": path, "flags": set()}  # fmt: skip
            elif cur is not None and key == "VmFlags:":
                cur["flags"] = set(rest.split())
            elif cur is not None:
                value = rest.split()
                if value and value[0].isdigit():
                    cur[key[:-1]] = int(value[0])
    if cur is not None:
        yield cur


def releasable(m: dict) -> bool:
    """Whether mapping ``m`` (:func:`mappings`) holds only pages its file holds: mapped
    read-only from a file that still exists, not a device, no dirty or anonymous page
    (a field that is missing counts as one), none of :data:`SKIP_FLAGS`."""
    path = m["path"]
    return (
        m["inode"] != 0
        and m["perms"][1] == "-"
        and path.startswith("/")
        and not path.startswith("/dev/")
        and not path.endswith(" (deleted)")
        and not (m["flags"] & SKIP_FLAGS)
        and all(m.get(k, 1) == 0 for k in ("Private_Dirty", "Shared_Dirty", "Anonymous"))
        and m.get("Rss", 0) > 0
    )


def release(environ=os.environ, smaps: str = "/proc/self/smaps") -> int:
    """Gives back the resident pages of every :func:`releasable` mapping of this process;
    returns how many KiB were resident in them (0: off, not Linux, nothing to give)."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if environ.get(ENV, "1") == "0" or advice is None or not sys.platform.startswith("linux"):
        return 0
    try:
        found = [m for m in mappings(smaps) if releasable(m)]
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError, ValueError):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return sum(m["Rss"] for m in found
               if madvise(m["start"], m["end"] - m["start"], advice) == 0)  # fmt: skip
