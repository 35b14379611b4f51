"""Peak-memory estimates from shapes, before anything compiles (issue: high resolution).

The step's memory is, per pixel of the output image:

* everything that scales with the image besides the optimizer state (activations,
  XLA's buffers, host copies, the retained heap): ``ACT_FACTOR`` x 4 bytes x the sum,
  over the VGG layers up to the deepest one read, of each layer's channels divided by
  its downsampling area. ``ACT_FACTOR`` is calibrated on the whole command's measured
  peak RSS (12.7 KB/px at 1024x768 with 100 L-BFGS pairs, of which 2.4 KB/px are the
  pairs), not on XLA's buffer assignment alone: ``memory_analysis()`` of the step
  reports only 0.6 GB of temporaries at 512x512 (the step needs no weight gradients,
  so XLA keeps little more than the ReLU masks). For the same reason ``--remat on``
  (``vgg.features_remat``) measured no reduction of those temporaries on XLA:CPU
  (595 vs 618 MB at 512x512), so the estimate does not count on it;
* the optimization state: the image and its average, and for L-BFGS ``2 x memory_size``
  curvature vectors of the image's size (100 pairs of a 2048x2048 RGB float32 image
  are 9.4 GiB alone);
* the VGG19 params (80 MiB; on CPU the Winograd kernel transforms, 198 MiB to relu5_1:
  one per layer, which the backward pass uses too).

A tiled run (:mod:`nstjax.tiles`) holds one tile's activations, but its targets are
computed on the whole reference images, one forward pass each (``targets``: XLA's
buffers for that program, :data:`TARGETS_BYTES_PER_PIXEL`). They are added to the step's
estimate, not compared with it: nstjax keeps glibc's heap (:mod:`nstjax.malloc`).

A run is refused when the estimate exceeds the memory available (``MemAvailable``, or
``NSTJAX_MEMORY_LIMIT``) with a message naming what would fit: a shorter
``--memory-size``, a smaller ``--size``, or a coarse-to-fine ``--scales`` schedule.

The fast network (:func:`fit_arbitrary`) has its own estimate, from the whole command's
peak RSS, and a bound on the pixels XLA:CPU runs it at.
"""

from __future__ import annotations

import os
import re

from nstjax import vgg_layers as vgg  # the layer table only: no JAX (nstjax.bare's command)
from nstjax.errors import UsageError

ACT_FACTOR = 4.2
PARAMS_BYTES = 80 * 2**20
WINOGRAD_PARAMS_BYTES = 200 * 2**20  # one F(4x4) kernel per layer to relu5_1: 198 MiB
BASELINE_BYTES = 600 * 2**20  # Python, JAX, XLA's compiled code and runtime
TARGETS_BYTES_PER_PIXEL = 512
"""A reference image's targets program, a forward pass to relu5_1: XLA's temporary
buffers are two 64-channel float32 maps a pixel (``memory_analysis()`` of
``objective._reference_targets`` at 512x384, 1024x768 and 2048x1536: 512 bytes a pixel
each). A whole 3072x2304 tiled command with ``--steps 0``: peak RSS 4,174 MiB, against
4.2 GiB for its targets (3.4 GiB), params and baseline."""

ARBITRARY_BASE_BYTES = 300 * 2**20
ARBITRARY_BYTES_PER_PIXEL = 150
"""The fast network's whole command (``nstjax stylize --method arbitrary``), peak RSS,
warm and cold (2026-12-05, AVX2 EPYC): 1024x768 292-410 MiB, 4096x3072 1,520-1,622 MiB,
6000x4500 3,304-3,609 MiB, 7000x5250 4,412 MiB: 120-135 bytes a pixel above ~200 MiB;
the estimate is 1.2-1.35x those peaks at 4096 px and more."""
ARBITRARY_CPU_MAX_PIXELS = 37_000_000
"""The most pixels the fast network runs at on XLA:CPU: 7000x5250 (36.75 million) ran;
8192x6144 (50.3 million) and 9000x6750 aborted the process inside XLA (``std::bad_alloc``,
at 5.4 and 6.4 GiB of RSS with 22 GiB available), as no estimate of memory predicts."""


def _layer_floats_per_pixel(deepest: str) -> tuple[float, float, float]:
    """(all layer outputs, the pooled maps, the largest block's) floats per input pixel."""
    last = vgg.LAYER_INDEX[deepest]
    total = pooled = block = biggest = 0.0
    area = 1
    for name in vgg.LAYERS[: last + 1]:
        if name.startswith("pool"):
            biggest = max(biggest, block)
            block = 0.0
            area *= 4
            total += vgg.channels(name) / area
            pooled += vgg.channels(name) / area
        else:
            c = vgg.channels(name) / area
            total += c
            block += c
    return total, pooled, max(biggest, block)


def estimate(
    height: int,
    width: int,
    deepest: str,
    channels: int = 3,
    memory_size: int = 100,
    lbfgs: bool = True,
    winograd: bool = False,
    runs: int = 1,
    tile_hw: tuple[int, int] | None = None,
    reference_px: int = 0,
) -> dict:
    """Estimated peak bytes of a run, with its parts. ``tile_hw``: the crop of a tiled
    run (:mod:`nstjax.tiles`), whose activations are one tile's, not the image's; its
    targets' forward pass over the largest whole reference image (``reference_px``
    pixels) is added. Untiled, the activations' calibration includes it for references
    up to the content's size; a larger one (``--style-scale``) adds the excess."""
    px = height * width
    ref_excess = reference_px - px
    total, _, _ = _layer_floats_per_pixel(deepest)
    act_px = px if tile_hw is None else tile_hw[0] * tile_hw[1]
    act = ACT_FACTOR * 4 * act_px * total
    image = 4 * px * channels
    state = image * (2 + (2 * memory_size if lbfgs else 2))
    params = PARAMS_BYTES + (WINOGRAD_PARAMS_BYTES if winograd else 0)
    parts = {
        "activations": act * runs,
        "optimizer_state": state * runs,
        "lbfgs_history": (2 * memory_size * image if lbfgs else 0) * runs,
        "params": params,
        "baseline": BASELINE_BYTES,
        # untiled, the activations' calibration covers references the content's size
        "targets": TARGETS_BYTES_PER_PIXEL * (reference_px if tile_hw else max(0, ref_excess)),
    }
    parts["total"] = (parts["activations"] + parts["optimizer_state"] + params
                      + BASELINE_BYTES + parts["targets"])  # fmt: skip
    return parts


def fit(settings, obj, hw: tuple[int, int], luminance: bool, style_hws=()) -> dict:
    """The estimate of a run (``settings``, objective ``obj``, image size ``hw``, style
    images' sizes ``style_hws``); a UsageError naming what would fit when it exceeds
    :func:`available_bytes`."""
    deepest = max(obj.layers, key=lambda name: vgg.LAYER_INDEX[name])
    lbfgs = settings.optimizer == "lbfgs"
    tile_hw = None
    if settings.tile and max(hw) > settings.tile:
        crop = settings.tile + 2 * vgg.halo(obj.layers)
        tile_hw = (min(hw[0], crop), min(hw[1], crop))
    reference_px = max(h * w for h, w in (tuple(hw), *style_hws))
    channels = 1 if luminance else 3
    winograd = obj.conv_impl != "xla"
    e = estimate(hw[0], hw[1], deepest, channels, settings.memory_size, lbfgs, winograd,
                 tile_hw=tile_hw, reference_px=reference_px)  # fmt: skip
    avail = available_bytes()
    if avail is not None and e["total"] > avail:
        hint = []
        if lbfgs and settings.memory_size > 10:
            short = estimate(hw[0], hw[1], deepest, channels, 10, True, winograd,
                             tile_hw=tile_hw, reference_px=reference_px)  # fmt: skip
            hint.append(f"--memory-size 10 ({gib(short['total'])}; the "
                        f"{settings.memory_size} L-BFGS pairs take "
                        f"{gib(e['lbfgs_history'])})")  # fmt: skip
        if reference_px > hw[0] * hw[1] and e["targets"] > e["total"] / 2:
            hint.append(f"a smaller --style-scale (a style image of {reference_px:,} pixels: "
                        f"its targets take {gib(e['targets'])})")  # fmt: skip
        if not settings.tile and max(hw) > 512:
            hint.append("--tile 512 (tiled gradients)")
        hint += ["a smaller --size", "a coarse-to-fine --scales schedule ending lower"]
        raise UsageError(
            f"a {hw[1]}x{hw[0]} run needs an estimated {gib(e['total'])} of memory "
            f"and {gib(avail)} is available; options: {', '.join(hint)}"
        )
    e["available"] = avail
    e["tile_hw"] = tile_hw
    return e


def fit_arbitrary(hw: tuple[int, int], batch: int = 1, cpu: bool = True) -> dict:
    """The fast network's estimate for ``batch`` images of ``hw``; a UsageError when it
    exceeds :func:`available_bytes` or, on CPU, :data:`ARBITRARY_CPU_MAX_PIXELS`."""
    px = hw[0] * hw[1]
    if not cpu:  # its figures are the host's (RSS, MemAvailable): a device has its own
        return {"total": None, "available": None}
    if px > ARBITRARY_CPU_MAX_PIXELS:
        raise UsageError(
            f"the fast network runs on CPU at up to {ARBITRARY_CPU_MAX_PIXELS:,} pixels, and "
            f"a {hw[1]}x{hw[0]} image has {px:,}; use a smaller --size"
        )
    total = ARBITRARY_BASE_BYTES + ARBITRARY_BYTES_PER_PIXEL * px * batch
    avail = available_bytes()
    if avail is not None and total > avail:
        what = f"{batch} images of {hw[1]}x{hw[0]}" if batch > 1 else f"a {hw[1]}x{hw[0]} image"
        hint = "a smaller --batch-size or --size" if batch > 1 else "a smaller --size"
        raise UsageError(
            f"the fast network on {what} needs an estimated {gib(total)} of memory and "
            f"{gib(avail)} is available; use {hint}"
        )
    return {"total": total, "available": avail}


def available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (None where unknown); ``NSTJAX_MEMORY_LIMIT``
    (bytes, or with a G/M suffix) overrides it."""
    limit = os.environ.get("NSTJAX_MEMORY_LIMIT", "").strip()
    if limit:
        match = re.fullmatch(r"(\d+(?:\.\d*)?(?:e\d+)?)\s*(?:([KMGT])(?:i?B)?|B)?", limit,
                             re.IGNORECASE)  # fmt: skip
        scale = 2 ** (10 * " KMGT".index((match[2] or " ").upper())) if match else 0
        value = int(float(match[1]) * scale) if match else 0
        if not 1 <= value < 2**63:
            raise UsageError(f"NSTJAX_MEMORY_LIMIT must be a positive size such as 8G, "
                             f"512M or 8000000000 (bytes), got {limit!r}")  # fmt: skip
        return value
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
