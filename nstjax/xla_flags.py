"""Default XLA flags for the CPU backend, applied when nstjax is imported.

Measured on a 2-core AVX2 machine (``benchmarks/gatys_speed.py``, 256x256): routing XLA:CPU's
matrix products through YNNPACK (``--xla_cpu_experimental_ynn_fusion_type=dot``) makes a
Gatys step about 15% faster (the Gram matrices and their gradients are long, skinny
products). Flags must be in ``XLA_FLAGS`` before JAX starts its CPU backend, so this runs
at import time and only appends flags the user has not set. Opt out with
``NSTJAX_XLA_DEFAULTS=0``; older jaxlib versions, which may not know the flag, are skipped.
"""

from __future__ import annotations

import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot",)
MIN_JAXLIB = (0, 10)


def _jaxlib_version() -> tuple[int, ...]:
    try:
        from jaxlib import version  # noqa: PLC0415

        return tuple(int(p) for p in version.__version__.split(".")[:2])
    except (ImportError, ValueError):
        return (0, 0)


def apply(environ=os.environ) -> list[str]:
    """Appends the default flags to ``XLA_FLAGS`` (those not already named); returns them."""
    if environ.get("NSTJAX_XLA_DEFAULTS", "1") == "0" or _jaxlib_version() < MIN_JAXLIB:
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f for f in CPU_FLAGS if f.split("=")[0] not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
