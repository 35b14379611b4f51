"""Batched sweep vs one run at a time: the Gatys Fig. 3 sweep (20 variants).

    python benchmarks/sweep_speed.py --size 128 --steps 50
    python benchmarks/sweep_speed.py --size 32 --steps 2 --rows 2   # 8 variants, a smoke test

Runs, each in a fresh process (so every compile is paid as a user would pay it):
  1. the whole sweep with ``nstjax run`` (batched per group, sharded over local devices);
  2. one single variant of each row (style layer set) with ``nstjax.stylize``; the
     four variants of a row cost the same, so 4 x the sum over rows is what running
     the 20 variants one at a time costs.
Prints the ratio batched / unbatched and how many programs were compiled.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIG3 = ROOT / "experiments" / "gatys2016_fig3.py"


def _fig3():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gatys2016_fig3", FIG3)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def single(size: int, steps: int, row: int, conv_impl: str = "auto") -> dict:
    from nstjax import gatys, sweep

    fig3 = _fig3()
    t0 = time.perf_counter()
    config = fig3.get_config("cpu")
    variants = sweep.expand(config, fig3.sweep)
    v = variants[4 * row]  # the first variant of that row
    settings = v.settings.replace(size=size, steps=steps, conv_impl=conv_impl)
    _, m = gatys.stylize(v.content, list(v.styles), settings=settings)
    return {
        "seconds": time.perf_counter() - t0,
        "compile_seconds": m["compile_seconds"],
        "seconds_per_step": m["seconds_per_step"],
    }


def batched(size: int, steps: int, batch_size: int, rows: int = 5, conv_impl: str = "auto") -> dict:
    """The sweep's first ``rows`` rows (4 variants each) with ``nstjax run``."""
    from nstjax import runner

    fig3 = _fig3()
    config = fig3.get_config("cpu").unlock()
    config.settings.size, config.settings.steps, config.batch_size = size, steps, batch_size
    config.settings.conv_impl = conv_impl

    def first_rows(add):
        calls = []
        fig3.sweep(lambda **kw: calls.append(kw))
        for kw in calls[: 4 * rows]:
            add(**kw)

    with tempfile.TemporaryDirectory() as workdir:
        return runner.run(config.lock(), workdir, first_rows, progress=False)


def main() -> None:
    import nstjax

    nstjax.setup()  # the CLI's process defaults (XLA flags, malloc)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--rows", type=int, default=5, choices=range(1, 6),
                   help="time the first ROWS rows (style-layer sets) of the five [5]")  # fmt: skip
    p.add_argument("--conv-impl", default="auto", help="the convolution's implementation [auto]")
    p.add_argument("--mode", choices=("single", "batched"), help=argparse.SUPPRESS)
    p.add_argument("--row", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode == "single":
        print(json.dumps(single(args.size, args.steps, args.row, args.conv_impl)))
        return
    if args.mode == "batched":
        print(
            json.dumps(batched(args.size, args.steps, args.batch_size, args.rows, args.conv_impl))
        )
        return
    out = {}
    for mode, row in [("batched", 0)] + [("single", r) for r in range(args.rows)]:
        cmd = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--row",
            str(row),
            "--rows",
            str(args.rows),
            "--conv-impl",
            args.conv_impl,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            sys.exit(f"{mode} run failed: {res.stderr.strip().splitlines()[-1]}")
        key = mode if mode == "batched" else f"single_row{row}"
        out[key] = json.loads(res.stdout.strip().splitlines()[-1])
        print(key, json.dumps(out[key]), flush=True)
    unbatched = 4 * sum(out[f"single_row{r}"]["seconds"] for r in range(args.rows))
    ratio = out["batched"]["seconds"] / unbatched
    print(
        f"\nFig. 3 sweep ({4 * args.rows} variants), {args.size} px, {args.steps} steps: batched "
        f"{out['batched']['seconds']:.1f} s; one at a time 4 x sum of rows = "
        f"{unbatched:.1f} s; ratio {ratio:.3f}; optimization programs compiled "
        f"{out['batched']['step_programs']} for {out['batched']['groups']} groups "
        f"({out['batched']['compiles']} XLA compiles in all, small ones included)"
    )


if __name__ == "__main__":
    main()
