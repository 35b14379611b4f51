"""What the coarse-to-fine pyramid buys, under one wall-time budget.

    python benchmarks/pyramid_vs_single.py --size 512 --budget 120 --out out/pyramid

Tübingen x The Starry Night, content relu4_2, style relu1_1..relu5_1, L-BFGS. First the
seconds per step at size/2 and size are measured (short warm runs, compilation excluded);
then, for a budget of ``--budget`` seconds of steps:

* single-scale: ``budget / t(size)`` steps at ``size`` from the content image;
* pyramid: half the budget at ``size/2`` (``budget/2 / t(size/2)`` steps), then half at
  ``size`` from that result upsampled (``budget/2 / t(size)`` steps).

Both are scored by the same single-scale Gatys loss at ``size`` (the pyramid's last level
is that objective; ``final.loss`` is computed at the written image). Writes both images
and ``side_by_side.png`` into ``--out`` and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"


def main() -> None:
    import nstjax

    nstjax.setup()  # the CLI's process defaults (XLA flags, malloc, compilation cache)
    import numpy as np
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--budget", type=float, default=120.0, help="seconds of steps")
    p.add_argument("--out", default="out/pyramid")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    content, style = IMAGES / "tubingen.jpg", IMAGES / "starry_night.jpg"
    base = nstjax.Settings(content_layers=("relu4_2",), memory_size=20)
    from nstjax.weights import api

    weights = api.load(base.weights)

    def step_seconds(size: int) -> float:
        _, m = nstjax.stylize(content, style, settings=base.replace(size=size, steps=6,
                              chunk_size=3), weights=weights)  # fmt: skip
        return m["seconds_per_step"]

    low = args.size // 2
    t_low, t_high = step_seconds(low), step_seconds(args.size)
    n_single = max(1, round(args.budget / t_high))
    n_low, n_high = max(1, round(args.budget / 2 / t_low)), max(1, round(args.budget / 2 / t_high))
    t0 = time.perf_counter()
    single, ms = nstjax.stylize(content, style, weights=weights, output=out / "single.png",
                                settings=base.replace(size=args.size, steps=n_single))  # fmt: skip
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    pyramid, mp = nstjax.stylize(
        content, style, weights=weights, output=out / "pyramid.png",
        settings=base.replace(size=args.size, scales=(low, args.size), scale_steps=(n_low, n_high)),
    )  # fmt: skip
    t_pyramid = time.perf_counter() - t0
    both = np.concatenate([single, np.full((single.shape[0], 8, 3), 255, np.uint8), pyramid], 1)
    Image.fromarray(both).save(out / "side_by_side.png")
    print(
        json.dumps(
            {
                "size": args.size,
                "budget_seconds_of_steps": args.budget,
                "seconds_per_step": {str(low): t_low, str(args.size): t_high},
                "single": {"steps": n_single, "final_loss": ms["final"]["loss"],
                           "run_seconds": ms["run_seconds"], "wall_seconds": t_single},
                "pyramid": {"steps": [n_low, n_high], "final_loss": mp["final"]["loss"],
                            "run_seconds": mp["run_seconds"], "wall_seconds": t_pyramid},
                "pyramid_over_single_loss": mp["final"]["loss"] / ms["final"]["loss"],
            }
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
