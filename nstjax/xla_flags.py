"""Default XLA settings: process flags at start-up, per-program options.

Routing XLA:CPU's matrix products through YNNPACK
(``--xla_cpu_experimental_ynn_fusion_type=dot``) makes the fast arbitrary-style network
about 15% faster (``benchmarks/arbitrary_speed.py``). Flags must be in ``XLA_FLAGS``
before JAX starts its backends, so :func:`apply` runs in ``nstjax.setup()`` (the entry
points call it first; never at import) and only appends flags the user has not set.

The Gatys step depends on the CPU. On the 2-core AVX2 machine its largest products were
the batched Winograd products (36 per layer), which XLA's own (Eigen) dot ran at 120-130
GFLOP/s against YNNPACK's 90-115, and whole 256x256 L-BFGS steps measured 8-10% faster
without YNNPACK (``benchmarks/impl_ab.py`` in processes with each setting, alternated).
On the 2-core AVX-512 EPYC (with the Kronecker-product Winograd transforms of
:mod:`nstjax.winograd`) it is the other way round: value-and-gradient steps took
0.141-0.150 s with YNNPACK against 0.156-0.162 s without at 256x192, and 0.608-0.627
against 0.616-0.641 s at 512x384 (alternated processes, 2 rounds). So the step program is
compiled with :func:`step_compiler_options`, which switches YNNPACK off for that program
only, and only on CPUs without AVX-512.

On GPU, XLA times every candidate cuDNN algorithm for each new convolution and every
Triton tiling for each new matrix product. On an NVIDIA H200 (jax 0.11.2,
``benchmarks/gpu_autotune_probe.py``, fresh processes, empty caches) that kept the 512x512
Gatys step compiling for over 95 s with XLA's convolution, with or without Triton or
autotuning's checks, and for over 90 s with F(4x4) Winograd; with
``--xla_gpu_autotune_level=0`` the F(2x2) step (``auto``'s GPU policy,
:mod:`nstjax.conv`) compiled in 13 s and ran in 0.028 s. The fast network at 1024x1024
pays the other way round: its first call took 5-6 s without autotuning against 43 s with
it, then 50-60 ms an image against 7.7 ms, so autotuning pays from ~700-900 images a process
(or once its programs are in the compile cache): name any level in ``XLA_FLAGS``, e.g.
``--xla_gpu_autotune_level=4``, to keep it. The flag is inert on CPU.

Opt out of all of these with ``NSTJAX_XLA_DEFAULTS=0``; older jaxlib versions, which may
not know the flags, are skipped.
"""

from __future__ import annotations

import functools
import os
import platform

from nstjax.errors import UsageError

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"{YNN_FLAG}=dot",)
GPU_FLAGS = ("--xla_gpu_autotune_level=0",)
DEFAULT_FLAGS = CPU_FLAGS + GPU_FLAGS
MIN_JAXLIB = (0, 10)


def _jaxlib_version() -> tuple[int, ...]:
    try:
        from jaxlib import version  # noqa: PLC0415

        return tuple(int(p) for p in version.__version__.split(".")[:2])
    except (ImportError, ValueError):
        return (0, 0)


def apply(environ=os.environ) -> list[str]:
    """Appends the default flags to ``XLA_FLAGS`` (those not already named); returns them.

    XLA reads a value that does not start with ``--`` as the name of a file of flags:
    such a value is left alone, and one naming no file is a :class:`UsageError` (XLA
    would abort the process when its backend starts)."""
    current = environ.get("XLA_FLAGS", "")
    if current.strip() and not current.lstrip().startswith("--"):
        if not os.path.isfile(current):
            raise UsageError(f"XLA_FLAGS={current!r} names no file; XLA reads a value that "
                             "does not start with '--' as a file of flags")  # fmt: skip
        return []
    if not _enabled(environ):
        return []
    named = {f.split("=")[0] for f in current.split()}
    added = [f for f in DEFAULT_FLAGS if f.split("=")[0] not in named]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def _enabled(environ) -> bool:
    return environ.get("NSTJAX_XLA_DEFAULTS", "1") != "0" and _jaxlib_version() >= MIN_JAXLIB


@functools.cache
def cpu_features() -> str:
    """The CPU's feature flags (``/proc/cpuinfo``; else the machine and processor)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


ONE_OFF_FLAGS = {"xla_cpu_use_fusion_emitters": False}
"""XLA:CPU's elemental emitters instead of its MLIR fusion emitters, for programs that run
once or a few times per run: the distance panel's and the VGG kernel transforms. A
process that compiles several programs with the fusion emitters compiles each later one
slower and holds more memory: the whole panel's score program, compiled after
its targets programs as in the panel's compile child (``benchmarks/compile_options.py``,
LLVM level 1), took 10.0-10.1 CPU-seconds and peaked at 1,524-1,531 MiB at 256x192 with
them against 7.1-9.1 and 970-974 MiB without; at 512x384 12.2 against 8.0 CPU-seconds,
2,425 against 1,820 MiB, and its calls 1.59 against 1.09 s. Not for the step (no faster
to compile, as fast to run) nor the fast network (its 384 px stylization measured 10-15%
slower without the fusion emitters), nor the objective's targets and final losses
(their rounding moved enough that a 32 px sweep's and a single run's L-BFGS paths parted
by 1.8% at step 2, and a content image's content loss was 1e-5 instead of 0)."""


def one_off_compiler_options(environ=os.environ) -> dict:
    """Compiler options for programs that run once or a few times per run (``{}`` with
    ``NSTJAX_XLA_DEFAULTS=0`` or an older jaxlib). Only CPU reads the option."""
    return dict(ONE_OFF_FLAGS) if _enabled(environ) else {}


def step_compiler_options(
    backend: str, environ=os.environ, cpu: str | None = None
) -> dict[str, str]:
    """Compiler options for the optimization-step programs (``{}``: the process defaults).

    On CPU without AVX-512 (``cpu``: feature flags, default :func:`cpu_features`),
    YNNPACK is switched off for the program unless the user chose its fusion types in
    ``XLA_FLAGS`` (any value other than this module's default).
    """
    if backend != "cpu" or not _enabled(environ):
        return {}
    if "avx512f" in (cpu_features() if cpu is None else cpu).split():
        return {}
    for flag in environ.get("XLA_FLAGS", "").split():
        if flag.startswith(YNN_FLAG + "=") and flag not in CPU_FLAGS:
            return {}
    return {YNN_FLAG.removeprefix("--"): ""}
