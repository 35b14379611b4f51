"""Whole compiled programs kept on disk, so that a warm run neither traces nor lowers.

JAX's persistent compilation cache (:mod:`nstjax.process`) skips XLA's compile on a
second run, but its key is the lowered program: every run still traces the Python
function and lowers it first (for the step program, seconds per run on the 2-core
CPU). :func:`compile` (for a program the caller lowers) and :class:`Jit` (a ``jax.jit``
stand-in) compile a shape as usual the first time and write the executable
(``jax.experimental.serialize_executable``) to ``<compile cache>/nstjax-aot/``; later
processes read it back instead of tracing.

The key is a SHA-256 of everything that decides the program without tracing it:

* the source of the whole ``nstjax`` package (any edit makes new keys);
* jax and jaxlib versions, the backend's platform and version, the devices' kind, the
  CPU's feature flags, ``XLA_FLAGS``, the compiler options and the JAX settings that
  change what a trace produces (64-bit mode, default matmul precision: a process that
  set them in code and a compile child that did not get different keys);
* the function's module and name, the static arguments' ``repr`` and the dynamic ones'
  tree structure, shapes, dtypes, weak types and shardings.

What the source cannot cover switches the store off (plain ``jax.jit`` then, with
JAX's own cache): a loss kind registered from user code (its function lives outside
the package), a static argument whose ``repr`` names a memory address, several
processes, ``NSTJAX_COMPILE_CACHE=0`` (or ``NSTJAX_AOT=0``). A file that does not
load (its SHA-256 does not match, another build) is deleted, never handed to the
loader; files are written atomically. Programs with LAPACK custom calls (``eigh`` in the
``w2`` loss) are kept: a fresh process has not yet filled jaxlib's table of LAPACK
routines (reloading one crashed the process with jax 0.10.2 on CPU), so :func:`load`
fills it first (:func:`_lapack_ready`). Not kept: programs with any other custom call
(a Python callback cannot be reloaded) and executables that JAX's cache handed back (see
:func:`_compile_and_store`); so that a :class:`Jit` program does not stay in that state
after nstjax's source changes (an upgrade), its name, which starts JAX's own cache key,
carries the source fingerprint: the new source misses JAX's cache once and is kept whole.
Like JAX's cache, the directory holds machine code and must be trusted: keep it private
to the user (it is created 0o700 here).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jaxlib

from nstjax import atomic, bare, bare_write, malloc, monitor, xla_flags
from nstjax.bare import source_fingerprint
from nstjax.bare_write import custom_calls as _custom_calls
from nstjax.terms import registry

MAGIC = b"nstjax-aot-2\n"
SUBDIR = "nstjax-aot"
HIT_EVENT = "/nstjax/aot/cache_hits"
MISS_EVENT = "/nstjax/aot/stored"
UNSTORABLE = ".unstorable"
DONE = ".done"
"""A mark that a key's work was done by a compile child (:func:`mark_done`), for work
that is several programs and is keyed by its inputs (:func:`nstjax.panel.prebuild_key`)."""
LAPACK_PREFIX = "lapack_"
"""Custom-call targets of jaxlib's LAPACK kernels on CPU (``lapack_ssyevd_ffi``, ...)."""


@functools.cache
def _lapack_ready() -> bool:
    """Fills jaxlib's table of LAPACK routines (as lowering an ``eigh`` does), which a
    stored program's LAPACK calls use; False where this jaxlib has no such hook (its
    LAPACK programs are then not kept). 0.06 s, once per process."""
    try:
        from jax._src.lib import lapack  # noqa: PLC0415  (no public hook)

        lapack._lapack.initialize()
    except Exception:  # noqa: BLE001
        return False
    return True


def directory(environ=os.environ) -> Path | None:
    """Where executables are kept, or None when the store is off."""
    return bare.store_directory(SUBDIR, environ)


def _builtin_kinds_only() -> bool:
    """True when every registered loss kind's functions are nstjax's own."""
    for kind in registry.registered().values():
        for value in vars(kind).values():
            if callable(value) and not getattr(value, "__module__", "").startswith("nstjax."):
                return False
    return True


def _leaf_key(x) -> str:
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return f"A{x.shape}{x.dtype}w{x.weak_type}{x.sharding!r}"
    if hasattr(x, "shape") and hasattr(x, "dtype"):  # numpy
        return f"N{tuple(x.shape)}{x.dtype}"
    return f"P{type(x).__name__}"  # Python scalars: weakly typed dynamic arguments


def keyable() -> bool:
    """Whether this process's programs can be keyed by the package source at all (one
    process, every registered loss kind nstjax's own)."""
    return jax.process_count() == 1 and _builtin_kinds_only()


def environment() -> list[str]:
    """What decides a program besides its arguments: the package source, versions,
    backend, CPU features, ``XLA_FLAGS`` and the JAX settings that change a trace."""
    backend = jax.default_backend()
    client = jax.devices(backend)[0].client
    return [
        MAGIC.decode(), source_fingerprint(), jax.__version__, jaxlib.__version__, backend,
        client.platform_version, xla_flags.cpu_features(),  # AVX-512 code needs AVX-512
        repr(sorted({d.device_kind for d in jax.devices(backend)})),
        os.environ.get("XLA_FLAGS", ""),
        repr((jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision)),
    ]  # fmt: skip


def key(name: str, statics: Sequence, dynamics: Sequence, options: dict | None) -> str | None:
    """The store's key of one call, or None when it cannot be keyed safely."""
    if not keyable():
        return None
    static = repr(tuple(statics))
    if " at 0x" in static:
        return None
    leaves, tree = jax.tree.flatten(tuple(dynamics))
    if not leaves or not isinstance(leaves[0], (jax.Array, jax.ShapeDtypeStruct)):
        return None  # uncommitted inputs: let jit place them
    parts = [
        *environment(), repr(sorted((options or {}).items())),
        name, static, str(tree), *map(_leaf_key, leaves),
    ]  # fmt: skip
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _devices(dynamics) -> list | None:
    leaf = jax.tree.leaves(tuple(dynamics))[0]
    sharding = leaf.sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None:
        return list(mesh.devices.flat)
    return sorted(sharding.device_set, key=lambda d: d.id)


def load(k: str, dynamics, serialized_out: list | None = None) -> jax.stages.Compiled | None:
    """The stored executable of key ``k``, or None (absent, unreadable, stale).
    ``serialized_out``: JAX's pickle of the program is appended to it (for
    :func:`nstjax.bare_write.write`)."""
    d = directory()
    if d is None:
        return None
    path = d / f"{k}.bin"
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    if not blob.startswith(MAGIC):
        return None
    try:
        from jax.experimental import serialize_executable  # noqa: PLC0415

        payload = bare.unseal(MAGIC, blob)
        if payload is None:
            path.unlink(missing_ok=True)
            return None  # damaged: never hand damaged machine code to the loader
        serialized, in_tree, out_tree, lapack = pickle.loads(payload)
        if lapack and not _lapack_ready():
            return None
        compiled = serialize_executable.deserialize_and_load(
            serialized, in_tree, out_tree, execution_devices=_devices(dynamics)
        )
    except Exception:  # noqa: BLE001  (another build's file: compile again)
        path.unlink(missing_ok=True)
        return None
    jax.monitoring.record_event(HIT_EVENT)
    if serialized_out is not None:
        serialized_out.append(serialized)
    return compiled


def store(k: str, compiled: jax.stages.Compiled) -> bool:
    """Writes ``compiled`` under key ``k`` (atomically); False when it cannot be kept."""
    d = directory()
    if d is None:
        return False
    try:
        from jax.experimental import serialize_executable  # noqa: PLC0415

        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        calls = _custom_calls(compiled)
        lapack = bool(calls)
        if not all(c.startswith(LAPACK_PREFIX) for c in calls) or (lapack and not _lapack_ready()):
            # a Python callback & co. does not survive a reload. The mark tells a later
            # run not to ask a compile child for it (nstjax.child).
            atomic.write_bytes(d / f"{k}{UNSTORABLE}", b"custom calls\n")
            return False
        serialized, in_tree, out_tree = serialize_executable.serialize(compiled)
        payload = pickle.dumps((serialized, in_tree, out_tree, lapack), protocol=5)
        atomic.write_bytes(d / f"{k}.bin", bare.seal(MAGIC, payload))
    except Exception:  # noqa: BLE001  (not serializable, disk full: keep running)
        return False
    jax.monitoring.record_event(MISS_EVENT)
    return True


def compile(  # noqa: A001  (the verb of jax.stages)
    name: str,
    lower: Callable[[], jax.stages.Lowered],
    statics: Sequence,
    dynamics: Sequence,
    options: dict | None = None,
) -> jax.stages.Compiled:
    """``lower().compile(options)``, or the stored executable of the same key."""
    k = key(name, statics, dynamics, options)
    if k is not None:
        compiled = load(k, dynamics)
        if compiled is not None:
            return compiled
    return _compile_and_store(k, lambda: lower().compile(options))


def _compile_and_store(k: str | None, compile_fn, on_fresh=None) -> jax.stages.Compiled:
    """Compiles; stores the result only if XLA really compiled it: an executable that
    JAX's own cache handed back serializes without its code ('Function ... not found'
    when the stored copy runs), so such a program is kept by JAX's cache alone until
    ``nstjax cache clear``.

    Then the heap's free pages go back to the kernel (:func:`nstjax.malloc.trim`): the
    compiler's objects are freed by now, and :mod:`nstjax.malloc` keeps freed memory.
    A cold 256 px run compiles its targets, initial states and Winograd kernel transforms
    here (the step and the panel in children, :mod:`nstjax.child`) just before the
    transforms, its largest allocation: on the 2-core AVX2 EPYC its peak RSS was
    762-763 MiB against 795-800 MiB without the trim (``NSTJAX_COMPILE_CACHE`` empty,
    4 runs each, alternated), the same wall time.

    ``on_fresh(compiled)`` runs when XLA really compiled it here (a bare record,
    :mod:`nstjax.bare_write`, is written from such an executable only: one read back from
    disk serializes without its code too)."""
    with monitor.count_compiles() as compiles:
        compiled = compile_fn()
    if k is not None and compiles.cache_hits == 0 and store(k, compiled) and on_fresh:
        on_fresh(compiled)
    malloc.trim()
    return compiled


def known(k: str | None) -> bool:
    """Whether key ``k`` has a stored executable (not checked until loaded), is marked
    as one that cannot be stored, or is marked done (:func:`mark_done`)."""
    d = directory()
    return (
        k is not None
        and d is not None
        and any((d / f"{k}{suffix}").is_file() for suffix in (".bin", UNSTORABLE, DONE))
    )


def mark_done(k: str | None) -> None:
    """Marks key ``k``'s work done (:func:`known` is then True); nothing when the store
    is off or the mark cannot be written."""
    d = directory()
    if k is None or d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic.write_bytes(d / f"{k}{DONE}", b"done\n")
    except OSError:
        pass


class Jit:
    """``jax.jit(fun, static_argnums=...)`` whose executables go through the store.

    Calls with the same key in one process reuse the loaded executable. Meant for the
    programs that run a few times per run (targets, final losses, the panel); a hot
    loop should call :func:`compile`'s result directly. ``bare_name``: also keep the
    program as a bare record under that name (:func:`nstjax.bare_write.write`), for a command that
    runs it without importing JAX.
    """

    def __init__(
        self,
        fun: Callable,
        static_argnums: Sequence[int] = (),
        compiler_options: dict | None = None,
        bare_name: str | None = None,
        **jit_kwargs,
    ):
        self.fun = fun
        self.bare_name = bare_name
        self.static = tuple(static_argnums)
        self.options = dict(compiler_options or {})
        self.name = f"{fun.__module__}.{getattr(fun, '__qualname__', fun)}"
        self._jit_kwargs = jit_kwargs
        self._jitted = None
        self._loaded: dict[str, jax.stages.Compiled] = {}
        functools.update_wrapper(self, fun)

    @property
    def jitted(self):
        """``jax.jit(fun, ...)``, made on first use with nstjax's source fingerprint in the
        program's name. JAX's cache key starts with that name, so when nstjax's source
        changes (an upgrade) the program misses JAX's cache and compiles for real, and can
        then be kept whole: an executable that JAX's cache hands back cannot be (see
        :func:`_compile_and_store`), so the program would otherwise be traced and looked
        up in JAX's cache by every later run (1.7 s of a warm fast-network command)."""
        if self._jitted is None:
            fun = self.fun

            @functools.wraps(fun)
            def tagged(*a):
                return fun(*a)

            tagged.__name__ = f"{getattr(fun, '__name__', 'fun')}_{source_fingerprint()[:12]}"
            self._jitted = jax.jit(
                tagged,
                static_argnums=self.static,
                compiler_options=self.options or None,
                **self._jit_kwargs,
            )
        return self._jitted

    def __call__(self, *args):
        if directory() is None:
            return self.jitted(*args)
        statics = [args[i] for i in self.static]
        dynamics = [a for i, a in enumerate(args) if i not in self.static]
        k = key(self.name, statics, dynamics, self.options)
        if k is None:
            return self.jitted(*args)
        compiled = self._loaded.get(k)
        if compiled is None:
            bare = None
            if self.bare_name is not None and not self.options:
                bare = functools.partial(bare_write.write, self.bare_name, statics, dynamics)
            serialized: list = []
            compiled = load(k, dynamics, serialized)
            if compiled is None:
                compiled = _compile_and_store(
                    k, lambda: self.jitted.lower(*args).compile(self.options or None), bare
                )
            elif bare is not None:  # the executable's own bytes, from the stored program
                bare(compiled, serialized[0])
            self._loaded[k] = compiled
        return compiled(*dynamics)

    def precompile(self, *args) -> bool:
        """Compiles the program of ``args`` (arrays or ``jax.ShapeDtypeStruct``s) into the
        store without running it; True if it is there (or known unstorable) now."""
        if directory() is None:
            return False
        statics = [args[i] for i in self.static]
        dynamics = [a for i, a in enumerate(args) if i not in self.static]
        k = key(self.name, statics, dynamics, self.options)
        if k is None:
            return False
        if not known(k):
            _compile_and_store(k, lambda: self.jitted.lower(*args).compile(self.options or None))
        return known(k)


class BySize:
    """``fun`` as two :class:`Jit` s with different compiler options, chosen per call by
    the size of argument ``sized_arg``'s arrays (the largest ``H x W``, axes -3 and -2):
    ``small`` up to ``max_pixels``, else ``large``; e.g. a short compile for small images
    and fast calls for large ones (:mod:`nstjax.panel`)."""

    def __init__(self, fun, static_argnums, sized_arg: int, max_pixels: int, small: dict,
                 large: dict):  # fmt: skip
        self.fun, self.sized_arg, self.max_pixels = fun, sized_arg, max_pixels
        self.small = Jit(fun, static_argnums, compiler_options=small)
        self.large = Jit(fun, static_argnums, compiler_options=large)
        functools.update_wrapper(self, fun)

    def pick(self, *args) -> Jit:
        leaves = jax.tree.leaves(args[self.sized_arg])
        pixels = max(x.shape[-3] * x.shape[-2] for x in leaves)
        return self.small if pixels <= self.max_pixels else self.large

    def __call__(self, *args):
        return self.pick(*args)(*args)

    def precompile(self, *args) -> bool:
        return self.pick(*args).precompile(*args)
