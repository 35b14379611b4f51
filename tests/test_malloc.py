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
