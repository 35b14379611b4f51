"""Counting XLA compilations (for tests and benchmarks) via ``jax.monitoring`` events."""

from __future__ import annotations

import contextlib
import dataclasses

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@dataclasses.dataclass
class Compiles:
    count: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def count_compiles():
    """Counts backend compilations (cache hits excluded) inside the ``with`` block."""
    stats = Compiles()

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == _COMPILE_EVENT:
            stats.count += 1
            stats.seconds += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield stats
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
