"""Process-wide settings, applied by the entry points (never at import).

:func:`setup` sets nstjax's default XLA flags (:mod:`nstjax.xla_flags`) and glibc
malloc options (:mod:`nstjax.malloc`). The ``nstjax`` command, ``python -m
nstjax.main`` and the benchmarks call it first thing; library users who want the same
speed call ``nstjax.setup()`` before running any JAX code (the flags only take effect
before JAX starts its backend, the malloc options before XLA's threads allocate).
"""

from __future__ import annotations

import os

from nstjax import malloc, xla_flags

_DONE: dict = {}


def setup(environ=os.environ) -> dict:
    """Applies the process defaults once; returns what was applied."""
    if not _DONE:
        _DONE["xla_flags"] = xla_flags.apply(environ)
        _DONE["malloc"] = malloc.apply(environ)
    return dict(_DONE)
