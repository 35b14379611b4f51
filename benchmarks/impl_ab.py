"""Interleaved seconds per Gatys step for several convolution policies, in one process.

    python benchmarks/impl_ab.py --size 256 --impls xla auto --rounds 6

Timings on a shared machine drift by 10-20% between runs, so each policy's compiled
step runs in turn (3 steps per turn, ``--rounds`` turns) and min / median per step are
printed. Same problem as benchmarks/gatys_speed.py: Tübingen + The Starry Night,
content relu4_2, the five style layers, L-BFGS, max pooling.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--impls", nargs="+", default=["xla", "auto"])
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)

    import nstjax

    nstjax.setup()
    from nstjax import engine, gatys, image
    from nstjax.settings import Settings

    content = image.load(IMAGES / "tubingen.jpg", size=(args.size, args.size))
    style = image.load(IMAGES / "starry_night.jpg", size=(args.size, args.size))
    runs = {}
    for impl in args.impls:
        settings = Settings(
            size=args.size, conv_impl=impl, content_layers=("relu4_2",), pooling="max"
        )
        runner, state, ctx = engine.single_runner(
            gatys.prepare(settings, content, [style]), 3, "host"
        )
        state, _ = runner(state, 1, ctx)  # warm-up
        runs[impl] = {"runner": runner, "state": state, "ctx": ctx, "times": []}
    for _ in range(args.rounds):
        for run in runs.values():
            t = time.perf_counter()
            run["state"], _ = run["runner"](run["state"], 3, run["ctx"])
            run["times"].append((time.perf_counter() - t) / 3)
    for impl, run in runs.items():
        times = run["times"]
        print(
            f"size={args.size} impl={impl:14s} step min={min(times):.3f}s "
            f"median={np.median(times):.3f}s compile={run['runner'].compile_seconds:.1f}s"
        )


if __name__ == "__main__":
    main()
