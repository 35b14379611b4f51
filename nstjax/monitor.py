"""Counting XLA compilations (for tests and benchmarks) via ``jax.monitoring`` events."""

from __future__ import annotations

import contextlib
import dataclasses

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_AOT_HIT_EVENT = "/nstjax/aot/cache_hits"  # nstjax.aot: a whole executable read back
_CHILD_EVENT = "/nstjax/child/started"  # nstjax.child: a program compiled in a child
_CHILD_FAILED_EVENT = "/nstjax/child/failed"  # ... that failed (compiled here instead)


@dataclasses.dataclass
class Compiles:
    events: int = 0  # programs the backend produced (compiled, or read from the cache)
    seconds: float = 0.0
    cache_hits: int = 0  # programs read back from the persistent compilation cache
    aot_hits: int = 0  # of which whole executables (nstjax.aot: no tracing either)
    children: int = 0  # compile children started (nstjax.child): their programs load here
    children_failed: int = 0  # of which failed: their programs compiled here

    @property
    def count(self) -> int:
        """Programs really compiled (persistent-cache hits excluded)."""
        return self.events - self.cache_hits


@contextlib.contextmanager
def count_compiles():
    """Counts backend compilations (cache hits excluded) inside the ``with`` block."""
    stats = Compiles()

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == _COMPILE_EVENT:
            stats.events += 1
            stats.seconds += duration

    def hits(event: str, **kwargs) -> None:
        if event == _CACHE_HIT_EVENT:
            stats.cache_hits += 1
        elif event == _AOT_HIT_EVENT:  # no backend compile event: count it as one
            stats.events += 1
            stats.cache_hits += 1
            stats.aot_hits += 1
        elif event == _CHILD_EVENT:
            stats.children += 1
        elif event == _CHILD_FAILED_EVENT:
            stats.children_failed += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    jax.monitoring.register_event_listener(hits)
    try:
        yield stats
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        jax.monitoring.unregister_event_listener(hits)
