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

A run is refused when the estimate exceeds the memory available (``MemAvailable``, or
``NSTJAX_MEMORY_LIMIT``) with a message naming what would fit: a shorter
``--memory-size``, a smaller ``--size``, or a coarse-to-fine ``--scales`` schedule.
"""

from __future__ import annotations

import os

from nstjax import vgg
from nstjax.errors import UsageError

ACT_FACTOR = 4.2
PARAMS_BYTES = 80 * 2**20
WINOGRAD_PARAMS_BYTES = 200 * 2**20  # one F(4x4) kernel per layer to relu5_1: 198 MiB
BASELINE_BYTES = 600 * 2**20  # Python, JAX, XLA's compiled code and runtime


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
) -> dict:
    """Estimated peak bytes of a run, with its parts. ``tile_hw``: the crop of a tiled
    run (:mod:`nstjax.tiles`), whose activations are one tile's, not the image's."""
    px = height * width
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
    }
    parts["total"] = parts["activations"] + parts["optimizer_state"] + params + BASELINE_BYTES
    return parts


def fit(settings, obj, hw: tuple[int, int], luminance: bool) -> dict:
    """The estimate of a run (``settings``, objective ``obj``, image size ``hw``); a
    UsageError naming what would fit when it exceeds :func:`available_bytes`."""
    deepest = max(obj.layers, key=lambda name: vgg.LAYER_INDEX[name])
    lbfgs = settings.optimizer == "lbfgs"
    tile_hw = None
    if settings.tile and max(hw) > settings.tile:
        crop = settings.tile + 2 * vgg.halo(obj.layers)
        tile_hw = (min(hw[0], crop), min(hw[1], crop))
    e = estimate(hw[0], hw[1], deepest, 1 if luminance else 3, settings.memory_size,
                        lbfgs, obj.conv_impl != "xla", tile_hw=tile_hw)  # fmt: skip
    avail = available_bytes()
    if avail is not None and e["total"] > avail:
        hint = []
        if lbfgs and settings.memory_size > 10:
            short = estimate(hw[0], hw[1], deepest, 3, 10, True, obj.conv_impl != "xla")
            hint.append(f"--memory-size 10 ({gib(short['total'])}; the "
                        f"{settings.memory_size} L-BFGS pairs take "
                        f"{gib(e['lbfgs_history'])})")  # fmt: skip
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


def available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (None where unknown); ``NSTJAX_MEMORY_LIMIT``
    (bytes, or with a G/M suffix) overrides it."""
    limit = os.environ.get("NSTJAX_MEMORY_LIMIT")
    if limit:
        scale = {"G": 2**30, "M": 2**20}.get(limit[-1].upper(), 1)
        return int(float(limit.rstrip("GgMm")) * scale)
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
