"""How many L-BFGS steps ``--init arbitrary`` saves against starting from the content.

    python benchmarks/init_arbitrary.py --size 256 --steps 200

Runs Gatys' optimization (the defaults of ``nstjax stylize``) twice on the shared
images, from the content image and from the fast network's output, and reports, for
several loss levels reached from the content, the step at which the arbitrary start
reaches the same total loss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"


def first_step_below(curve: list[float], level: float) -> int | None:
    hits = np.nonzero(np.asarray(curve) <= level)[0]
    return int(hits[0]) if hits.size else None


def main() -> None:
    import nstjax

    nstjax.setup()  # the CLI's process defaults (XLA flags, malloc)
    from nstjax import gatys

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--content", default=str(IMAGES / "tubingen.jpg"))
    p.add_argument("--style", default=str(IMAGES / "starry_night.jpg"))
    p.add_argument("--json", help="write the curves and results here")
    args = p.parse_args()
    curves = {}
    for init in ("content", "arbitrary"):
        _, m = gatys.stylize(
            args.content, [args.style], size=args.size, steps=args.steps, init=init
        )
        curves[init] = m["loss"] + [m["final"]["loss"]]
        print(
            f"init={init}: loss {curves[init][0]:.4g} -> {curves[init][-1]:.4g} in "
            f"{args.steps} steps ({m['seconds_per_step']:.3f} s/step)",
            flush=True,
        )
    rows = []
    for k in sorted({args.steps // 8, args.steps // 4, args.steps // 2, args.steps}):
        level = curves["content"][k]
        hit = first_step_below(curves["arbitrary"], level)
        rows.append(
            {
                "content_steps": k,
                "loss": level,
                "arbitrary_steps": hit,
                "saved": None if hit is None else k - hit,
            }
        )
        print(
            f"loss {level:.4g}: from content {k} steps, from arbitrary "
            f"{hit if hit is not None else '>' + str(args.steps)} steps"
            + ("" if hit is None else f" (saves {k - hit}, {100 * (k - hit) / k:.0f}%)")
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"curves": curves, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
