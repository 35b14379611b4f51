"""Cold compiles in child processes, so the process that runs the steps never holds
the compiler's heap.

nstjax keeps freed memory in one glibc heap (:mod:`nstjax.malloc`: no ``mmap``, no
trimming), which makes warm steps fast. A program compiled in the same process leaves
that heap full of the compiler's small objects among live ones: the step's buffers no
longer fit the holes, the heap grows and the steps run slower. Measured on the 2-core
AVX-512 CPU, 256 px, 20-step chunks: with the step compiled in-process, chunks took
5.3-6.6 s and the peak RSS reached 2.0-2.3 GiB; with the same executable read from disk,
4.2-4.5 s and 1.35-1.5 GiB. Compiling the distance panel in-process before the steps did
the same (5.0-5.8 s per chunk, 2.1 GiB). ``malloc_trim`` after the compile gave the
memory back but not the speed; glibc's default malloc evened cold and warm out at the
slower 4.8 s.

So when a program is not in the store (:mod:`nstjax.aot`), a child process compiles it
and writes it there, and this process reads it back as a warm run would. Two children
(the step, the panel) compile at once on two cores. A child that fails costs nothing
but its time: the caller then compiles in-process as before.

A child is ``python -m nstjax.child`` with a pickled ``(module, function, args)`` on
its standard input; only functions in :data:`ALLOWED` can be named. Used on CPU only,
one process, with the store on; ``NSTJAX_COMPILE_CHILD=0`` turns it off.
"""

from __future__ import annotations

import atexit
import gc
import os
import pickle
import subprocess
import sys
import tempfile

from nstjax import pages

ENV = "NSTJAX_COMPILE_CHILD"
ALLOWED = frozenset({("nstjax.optim", "precompile"), ("nstjax.panel", "prebuild")})
TIMEOUT_S = 1800.0
STARTED_EVENT = "/nstjax/child/started"
FAILED_EVENT = "/nstjax/child/failed"


def enabled(environ=os.environ) -> bool:
    """Whether cold programs compile in a child (CPU, one process, store on)."""
    if environ.get(ENV, "1") == "0":
        return False
    import jax  # noqa: PLC0415

    from nstjax import aot  # noqa: PLC0415

    return (
        aot.directory(environ) is not None
        and jax.default_backend() == "cpu"
        and (jax.process_count() == 1)
    )


def _environment() -> dict:
    """This process's environment (the same XLA_FLAGS and store, hence the same keys),
    with JAX's own persistent cache off: the child compiles for real, since an
    executable that JAX's cache hands back cannot be kept whole (:mod:`nstjax.aot`), and
    every later run would then start a child again."""
    return dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")


class Child:
    """A running child: ``fn(*args)`` in a fresh interpreter. :meth:`wait` is True when
    it exited 0."""

    def __init__(self, fn, *args):
        key = (fn.__module__, fn.__qualname__)
        if key not in ALLOWED:
            raise ValueError(f"{key} may not run in a compile child")
        import jax  # noqa: PLC0415

        self.error: str | None = None
        self._proc = None
        self._log = tempfile.TemporaryFile()
        jax.monitoring.record_event(STARTED_EVENT)
        try:
            with tempfile.TemporaryFile() as payload:  # a file: the parent never blocks on a pipe
                pickle.dump((*key, args), payload, protocol=5)
                payload.seek(0)
                self._proc = subprocess.Popen(  # noqa: S603  (our own interpreter and module)
                    [sys.executable, "-m", "nstjax.child"],
                    env=_environment(),
                    stdin=payload,
                    stdout=subprocess.DEVNULL,
                    stderr=self._log,
                )
        except Exception as e:  # noqa: BLE001  (unpicklable, no interpreter: compile here)
            self.error = f"compile child not started: {type(e).__name__}: {e}"
            self._log.close()
            jax.monitoring.record_event(FAILED_EVENT)
        else:
            atexit.register(self._abandon)

    def _abandon(self) -> None:
        """At exit: a child nobody waited for (the run failed or was interrupted before it
        needed the programs) is killed, not left compiling after the command returned."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def wait(self, timeout: float = TIMEOUT_S) -> bool:
        if self._log.closed:  # waited for already (or never started)
            return self._proc is not None and self._proc.returncode == 0
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            rc = -9
        atexit.unregister(self._abandon)
        if rc != 0:
            self._log.seek(0)
            lines = self._log.read().decode(errors="replace").strip().splitlines()
            self.error = f"compile child exited {rc}: {lines[-1] if lines else ''}"
            import jax  # noqa: PLC0415

            jax.monitoring.record_event(FAILED_EVENT)  # metrics.json: compiles.children_failed
        self._log.close()
        return rc == 0


def main() -> int:
    """The child: reads ``(module, function, args)``, runs it, exits 0 (1 on an error).

    Python's cyclic garbage collector is off: tracing and lowering make millions of
    short-lived objects, the collector walked them over and over (2-3% of a child's
    CPU in ``gc_collect_main`` and its visitors), and the process exits once done. The
    children alone at 256x192 (the panel's, the step's; 2 alternated pairs): 13.7-14.1
    -> 13.2 and 8.3-8.4 -> 8.0-8.2 user CPU-seconds, peak RSS alike (726-734 against
    737-741 MiB; 461-469 against 466-476 MiB)."""
    gc.disable()
    module, name, args = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 (our parent)
    if (module, name) not in ALLOWED:
        print(f"not allowed: {module}.{name}", file=sys.stderr)
        return 2
    import importlib  # noqa: PLC0415

    try:
        fn = getattr(importlib.import_module(module), name)
        pages.release()  # what the imports touched: the compile maps back the code it runs
        fn(*args)
    except Exception as e:  # noqa: BLE001  (one line for the parent; it compiles itself)
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
