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
* the VGG19 params (80 MiB; Winograd kernel transforms up to ~4x that on CPU).

A run is refused when the estimate exceeds the memory available (``MemAvailable``, or
``NSTJAX_MEMORY_LIMIT``) with a message naming what would fit: a shorter
``--memory-size``, a smaller ``--size``, or a coarse-to-fine ``--scales`` schedule.
"""

from __future__ import annotations

import os

from nstjax import vgg

ACT_FACTOR = 4.2
PARAMS_BYTES = 80 * 2**20
WINOGRAD_PARAMS_BYTES = 320 * 2**20
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
) -> dict:
    """Estimated peak bytes of a run, with its parts."""
    px = height * width
    total, _, _ = _layer_floats_per_pixel(deepest)
    act = ACT_FACTOR * 4 * px * total
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
