"""Convolution tile policies: which 3x3 layers run Winograd, and with which tile (no JAX).

:data:`CONV_IMPLS` is the explicit registry of *tile policies* that
:mod:`nstjax.conv` (which re-exports every name here) applies; it lives apart so
the settings schema can check ``conv_impl`` without importing JAX. A policy maps a
layer's input height and width and its input and output channels to ``0`` (XLA's own
convolution) or ``m`` (Winograd F(m x m, 3 x 3), :mod:`nstjax.winograd`).
"""

from __future__ import annotations

from collections.abc import Callable

from nstjax.errors import UsageError

Policy = Callable[[int, int, int, int], int]


def _fixed(m: int, min_channels: int) -> Policy:
    def policy(h: int, w: int, c: int, o: int) -> int:
        del h, w, o
        return m if c >= min_channels else 0

    return policy


AUTO_MIN_CHANNELS = 16  # input channels: the RGB layer stays XLA's
AUTO_F3_MIN_CHANNELS = 256
AUTO_F3_MAX_PIXELS = 16 * 16


def _auto(h: int, w: int, c: int, o: int) -> int:
    """On CPU, F(4x4, 3x3) on every layer with >= 16 input channels, at any size.

    With the Kronecker-product transforms (:mod:`nstjax.winograd`), whole VGG19
    value-and-gradient steps on the 2-core AVX-512 CPU (``benchmarks/conv_speed.py
    --aspect 0.75 --impls I``, one process per policy, 3 rounds alternated; seconds per
    step, medians): at 256x192 F(4x4) on every layer but the RGB one (``winograd4``)
    0.162-0.169 against 0.196-0.248 for the previous policy (Winograd only from 64 input
    and 128 output channels and from 32x32 to 256x256 pixels) and 0.172-0.173 for
    ``winograd4_wide``; at 512x384 0.628-0.648 against 0.648-0.753.

    Layers past 256x256 pixels ran XLA's convolution until 2026-12-05: with the input
    transform as one Kronecker product, at 1024x768 ``winograd4`` had peaked at 5.1 GB
    against 3.7 GB for that bound, for 3.1-3.2 against 3.3-3.4 s a step. With the
    separable input transform (2-core AVX2 EPYC, ``--impls auto``, one process each,
    ``/usr/bin/time``'s peak RSS): at 1024x768 4.66 s a step and 2,619 MiB with the
    256x256 bound, 4.29 s and 2,748 MiB with a 512x512 bound, 3.69 s and 2,810 MiB with
    none; at 512x384 ``winograd4`` (conv1_2 too) 0.956-0.966 against 1.022-1.042 s for the
    256x256 bound (one process, alternated). So the bound is gone.

    On GPU, F(2x2, 3x3) on every layer with >= 16 input channels, at any size: on an
    NVIDIA H200 (jax 0.11.2, ``benchmarks/gpu_autotune_probe.py``, a fresh process and
    an empty compile cache per setting, 2026-12-04) the 512x512 L-BFGS step ran in
    0.028 s with ``winograd2`` (compile 13.0 s) and 0.027 s with ``winograd4`` (16.1 s)
    without autotuning (``--xla_gpu_autotune_level=0``, :mod:`nstjax.xla_flags`),
    against 0.79 s for XLA's convolution without autotuning, whose cuDNN autotuning
    took over 95 s to compile the step (every setting tried). F(2x2) compiles faster, so
    its whole run is shorter up to ~2,000 steps; at 1024x1024 its step took 0.075 s,
    its device memory 5.5 GB (XLA's convolution: 3.15 s, 5.1 GB). TPUs keep XLA's
    convolution (not measured).

    On CPU, layers of at most 16x16 positions and 256+ input channels (conv5_1 at
    256x192) take F(3x3, 3x3) instead: with so few tiles the products stream the kernel
    (F(4x4)'s 36 points of 512x512 floats, 36 MiB, for 12 tiles), and F(3x3)'s 25 points
    take 11 MiB less memory for the same step time (the 256x192 value-and-gradient,
    ``python benchmarks/conv_speed.py --sizes 256 --aspect 0.75 --impls auto winograd4
    --repeats 10`` and the reverse order, twice: medians 0.231-0.239 s against
    0.231-0.238 s for F(4x4) there). Below that many channels, and on conv4_x (F(3x3)
    there took 2-3% longer steps), F(4x4) stays.
    """
    del o
    import jax  # noqa: PLC0415  (when a program is built: the settings import this module)

    backend = jax.default_backend()
    if backend == "gpu":
        return 2 if c >= AUTO_MIN_CHANNELS else 0
    if backend != "cpu":
        return 0
    if c >= AUTO_F3_MIN_CHANNELS and h * w <= AUTO_F3_MAX_PIXELS:
        return 3
    return 4 if c >= AUTO_MIN_CHANNELS else 0


CONV_IMPLS: dict[str, Policy] = {
    "xla": _fixed(0, 0),
    "auto": _auto,
    # Fixed Winograd everywhere except the RGB input layer (3 channels cannot amortize
    # the transforms), and a variant limited to wide layers.
    "winograd2": _fixed(2, 16),
    "winograd3": _fixed(3, 16),
    "winograd4": _fixed(4, 16),
    "winograd4_wide": _fixed(4, 128),
}

DEFAULT_IMPL = "auto"


def check_impl(name: str) -> str:
    if name not in CONV_IMPLS:
        raise UsageError(
            f"unknown convolution implementation {name!r}; use one of {sorted(CONV_IMPLS)}"
        )
    return name


def tile_size(impl: str, h: int, w: int, c: int, o: int) -> int:
    """Winograd output tile size the policy ``impl`` picks for a layer (0: XLA)."""
    return CONV_IMPLS[check_impl(impl)](h, w, c, o)
