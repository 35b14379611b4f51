"""Seconds per Gatys step with each style term in place of the Gram loss, interleaved.

    python benchmarks/terms_speed.py --size 256 --rounds 5

One process builds every term's compiled step (``engine.single_runner`` on
``gatys.prepare``; Tübingen + The Starry Night, content relu4_2, style relu1_1..relu5_1,
L-BFGS, max pooling, the default convolution policy), warms each up, then runs them in
turn (``--steps`` steps per turn, ``--rounds`` turns) so that a shared machine's drift
hits all alike, and prints a markdown table: min and median seconds per step, the
median's ratio to ``gram``'s, and compile seconds. ``selfsim`` is a content term: its
row is the Gram run with ``selfsim`` in place of ``mse``. Terms take their default
options (``--terms 'mmd_rbf:samples=512' ...`` to try others).

Measured once (2-core AMD EPYC shared with other work, 256 px, auto policy): median
step / gram's: meanstd 0.84, mmd_linear 0.79, mmd_poly 0.96, mmd_rbf 1.03, sliced_w2
1.04, hist 1.25, mrf 1.27, relaxed_emd 1.30, gram + selfsim 1.04 (gram 0.67 s); w2 4.7
(min 2.2): its per-step eigh runs in OpenBLAS (jaxlib's LAPACK), whose own threads fight
XLA's on two cores and stall for seconds at random; with OPENBLAS_NUM_THREADS=1 the
term's loss and gradient took 0.18 s against gram's 0.11 s (isolated timing).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"
TERMS = (
    "gram",
    "meanstd",
    "mmd_linear",
    "mmd_poly",
    "mmd_rbf",
    "w2",
    "sliced_w2",
    "hist",
    "mrf",
    "relaxed_emd",
    "selfsim",
)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per turn")
    p.add_argument("--terms", nargs="+", default=list(TERMS))
    p.add_argument("--conv-impl", default="auto")
    args = p.parse_args(argv)

    import nstjax

    nstjax.setup()
    from nstjax import engine, gatys, image, terms
    from nstjax.settings import Settings

    content = image.load(IMAGES / "tubingen.jpg", size=(args.size, args.size))
    style = image.load(IMAGES / "starry_night.jpg", size=(args.size, args.size))
    names = list(dict.fromkeys(["gram", *args.terms]))
    runs = {}
    for term in names:
        kind = terms.parse(term).kind
        if terms.get(kind).role == "content":
            losses = dict(content_loss=(term,), style_loss=("gram",))
        else:
            losses = dict(style_loss=(term,))
        settings = Settings(
            size=args.size,
            conv_impl=args.conv_impl,
            content_layers=("relu4_2",),
            style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
            pooling="max",
            **losses,
        )
        t0 = time.perf_counter()
        runner, state, ctx = engine.single_runner(
            gatys.prepare(settings, content, [style]), args.steps, "host"
        )
        state, _ = runner(state, args.steps, ctx)  # warm-up
        runs[term] = {"runner": runner, "state": state, "ctx": ctx, "times": []}
        print(f"built {term} in {time.perf_counter() - t0:.1f}s", flush=True)
    for _ in range(args.rounds):
        for run in runs.values():
            t = time.perf_counter()
            run["state"], _ = run["runner"](run["state"], args.steps, run["ctx"])
            run["times"].append((time.perf_counter() - t) / args.steps)
    base = float(np.median(runs["gram"]["times"]))
    print(f"\nsize {args.size}, conv_impl {args.conv_impl}, {args.rounds} turns of "
          f"{args.steps} steps\n")  # fmt: skip
    print("| term | step min (s) | step median (s) | median / gram | compile (s) |")
    print("| --- | --- | --- | --- | --- |")
    for term, run in runs.items():
        times = run["times"]
        label = f"gram + {term} (content)" if term == "selfsim" else term
        print(
            f"| {label} | {min(times):.3f} | {np.median(times):.3f} | "
            f"{np.median(times) / base:.2f} | {run['runner'].compile_seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
