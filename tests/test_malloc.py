"""The glibc malloc defaults applied at import (nstjax/malloc.py)."""

from __future__ import annotations

import subprocess
import sys

from nstjax import malloc


def test_opt_out_and_glibc():
    assert malloc.apply({"NSTJAX_MALLOC_DEFAULTS": "0"}) is False
    # This machine runs glibc on Linux: every setting is accepted.
    assert malloc.apply({}) is (sys.platform.startswith("linux"))


def test_import_keeps_working_with_opt_out():
    code = "import nstjax, nstjax.malloc as m; print(m.apply({'NSTJAX_MALLOC_DEFAULTS': '0'}))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"NSTJAX_MALLOC_DEFAULTS": "0", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_trim_gives_freed_heap_back():
    """With the defaults (no mmap: a large block comes from the heap), freed memory stays
    resident until ``trim`` returns it to the kernel."""
    code = (
        "import nstjax, nstjax.malloc as m\nm.apply()\n"
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS'))"
        ".split()[1]) // 1024\n"
        "a = bytearray(300 << 20); b = bytearray(8); held = rss(); del a\n"
        "kept = rss(); ok = m.trim(); print(held, kept, rss(), ok)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    held, kept, trimmed, ok = out.stdout.split()
    if not sys.platform.startswith("linux"):
        assert ok == "False"
        return
    assert int(kept) > int(held) - 50  # freed, still resident (the heap keeps it)
    assert int(trimmed) < int(kept) - 250  # given back
    assert ok == "True"
