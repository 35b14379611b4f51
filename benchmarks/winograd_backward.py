"""Milliseconds of the Winograd backward's per-point product, by VGG19 layer and form.

    python benchmarks/winograd_backward.py --size 256 --aspect 0.75 --repeats 30

The input gradient of a Winograd F(4x4, 3x3) layer multiplies, at each of the 36
transform points, the transformed output gradient ``dV`` (P tiles x O channels) by the
layer's transformed kernel. Three forms, timed alternately in one process with the
step's compiler options:

* ``rotated``: ``dV . R`` with a second stored kernel ``R`` (O x C, the rotated kernel's
  transform; what nstjax stored before 2026-12-04);
* ``dv_ut``: ``dV . U^T`` with the forward's kernel ``U`` (C x O);
* ``u_dvt``: ``U . dV^T`` (C x P), the forward's kernel again.

:func:`nstjax.winograd._input_grad` takes ``u_dvt`` below
:data:`nstjax.winograd.SMALL_TILE_COUNT` tiles and ``dv_ut`` above, so it needs no
second kernel. Prints one line per layer and the sums (medians, milliseconds).
"""

from __future__ import annotations

import argparse
import time

LAYERS = (  # name, input channels, output channels, downsampling of the image
    ("conv1_2", 64, 64, 1),
    ("conv2_1", 64, 128, 2),
    ("conv2_2", 128, 128, 2),
    ("conv3_1", 128, 256, 4),
    ("conv3_x", 256, 256, 4),
    ("conv4_1", 256, 512, 8),
    ("conv4_x", 512, 512, 8),
    ("conv5_1", 512, 512, 16),
)
COUNT = {"conv3_x": 3, "conv4_x": 3}  # conv3_2..3_4, conv4_2..4_4 (to relu5_1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="image width [256]")
    p.add_argument("--aspect", type=float, default=0.75, help="height / width [0.75]")
    p.add_argument("--repeats", type=int, default=30, help="alternated calls per form [30]")
    args = p.parse_args(argv)
    if args.size < 16 or args.repeats < 1 or not 0 < args.aspect <= 4:
        p.error("--size must be >= 16, --repeats >= 1 and --aspect in (0, 4]")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import nstjax

    nstjax.setup()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nstjax import winograd, xla_flags

    options = xla_flags.step_compiler_options(jax.default_backend())
    forms = {
        "rotated": lambda dv, r, u: jnp.einsum("tpo,toc->tpc", dv, r),
        "dv_ut": lambda dv, r, u: jnp.einsum("tpo,tco->tpc", dv, u),
        "u_dvt": lambda dv, r, u: jnp.einsum("tco,tpo->tcp", u, dv),
    }
    rng = np.random.default_rng(0)
    width, height = args.size, round(args.size * args.aspect)
    totals = dict.fromkeys([*forms, "nstjax"], 0.0)
    for name, c, o, down in LAYERS:
        tiles = -(-(height // down) // 4) * -(-(width // down) // 4)
        dv = jnp.asarray(rng.standard_normal((36, tiles, o)), jnp.float32)
        r = jnp.asarray(rng.standard_normal((36, o, c)), jnp.float32)
        u = jnp.asarray(rng.standard_normal((36, c, o)), jnp.float32)
        compiled = {k: jax.jit(f).lower(dv, r, u).compile(options) for k, f in forms.items()}
        times = {k: [] for k in forms}
        for _ in range(args.repeats):
            for k, f in compiled.items():
                t = time.perf_counter()
                f(dv, r, u).block_until_ready()
                times[k].append(time.perf_counter() - t)
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        for k in forms:
            totals[k] += med[k] * COUNT.get(name, 1)
        picked = "u_dvt" if tiles < winograd.SMALL_TILE_COUNT else "dv_ut"
        totals["nstjax"] += med[picked] * COUNT.get(name, 1)
        cells = "  ".join(f"{k} {v:6.2f}" for k, v in med.items())
        count = COUNT.get(name, 1)
        print(f"{name} x{count} tiles={tiles:5d}  {cells}  nstjax: {picked}", flush=True)
    print("sum (ms, to relu5_1): " + "  ".join(f"{k} {v:.1f}" for k, v in totals.items()))


if __name__ == "__main__":
    main()
