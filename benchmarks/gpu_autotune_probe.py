"""Which XLA GPU autotuning setting to run with: compile seconds against step seconds.

    python benchmarks/gpu_autotune_probe.py --out probe.json --pick best_flags.txt
    python benchmarks/gpu_autotune_probe.py --settings level0_winograd4 level0_xla --size 256

(``PYTHONPATH=$PWD`` from the checkout's root where nstjax is not installed: the probe's
children import it; ``gpu_suite.sh --probe`` sets it.)

On the H200 lent on 2026-12-04 (jax 0.11.2), XLA's default autotuning (level 4: every
convolution and GEMM fusion timed, with buffer initialization and a correctness check of
each candidate) kept a 512 px Gatys step compiling for over 95 s, while
``--xla_gpu_autotune_level=0`` compiled it in about 6 s but ran it 28x slower than
Winograd F(2x2) without autotuning (13 s, 0.028 s a step): nstjax's GPU defaults since
(README, "GPU"). This
script compiles and runs the same 512 px step (benchmarks/gatys_speed.py: L-BFGS, a few
untimed steps, then timed ones) once per setting in ``SETTINGS`` (XLA flags and the
convolution's implementation), each in a fresh process
under ``timeout`` with its own empty compile cache (``NSTJAX_COMPILE_CACHE=DIR``; the
autotuning results land there too, so a later run with the same flags and cache reuses
them), and prints one JSON line per setting: compile seconds, steady seconds per step and
what a user's 100-step run would wait for (compile + 100 steps). ``--pick FILE``
writes the winner's ``XLA_FLAGS``, its cache folder and its ``--conv-impl`` as three
lines. A flag this XLA does not know aborts its process: that setting is reported as
failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

# name: (XLA_FLAGS added for that setting, --conv-impl), in the order they run. Each names
# its autotuning level, as nstjax.setup() adds --xla_gpu_autotune_level=0 when none is
# named. H200, 2026-12-04, 512 px: level0_winograd2 (nstjax's default) 13.0 s + 0.0281 s a
# step, level0_winograd4 16.1 s + 0.0266 s, level0_xla 6.3 s + 0.791 s; winograd4 autotuned
# and XLA's convolution autotuned (also at level 1 and without Triton GEMMs) over 90 s.
SETTINGS = {
    "level0_winograd2": ("--xla_gpu_autotune_level=0", "winograd2"),
    "autotuned_winograd2": ("--xla_gpu_autotune_level=4", "winograd2"),
    "level0_winograd4": ("--xla_gpu_autotune_level=0", "winograd4"),
    "autotuned_winograd4": ("--xla_gpu_autotune_level=4", "winograd4"),
    "level0_xla": ("--xla_gpu_autotune_level=0", "xla"),
    "autotuned_xla": ("--xla_gpu_autotune_level=4", "xla"),
    "level1_xla": ("--xla_gpu_autotune_level=1", "xla"),
    "level1_xla_no_triton_gemm": (
        "--xla_gpu_autotune_level=1 --xla_gpu_enable_triton_gemm=false",
        "xla",
    ),
}
# --settings' default: the default and the one not yet measured
DEFAULT_SETTINGS = ["level0_winograd2", "autotuned_winograd2"]


def probe(name: str, size: int, steps: int, limit: float, cache: Path) -> dict:
    env = dict(os.environ)
    flags, conv_impl = SETTINGS[name]
    env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), flags) if f)
    env["NSTJAX_COMPILE_CACHE"] = str(cache)
    cmd = [sys.executable, str(BENCH / "gatys_speed.py"), "--sizes", str(size)]
    cmd += ["--steps", str(steps), "--warmup", "2", "--conv-impl", conv_impl]
    row = {"setting": name, "xla_flags": flags, "conv_impl": conv_impl, "size": size}
    row["cache"] = str(cache)
    t0 = time.perf_counter()
    res = subprocess.run(
        ["timeout", "-k", "5", str(int(limit)), *cmd], capture_output=True, text=True, env=env
    )
    row["wall_seconds"] = round(time.perf_counter() - t0, 2)
    found = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode in (124, 137):
        row["status"] = f"timeout ({int(limit)} s)"
    elif res.returncode != 0 or not found:
        tail = (res.stderr.strip() or "no output").splitlines()[-1][:300]
        row["status"] = f"failed (exit {res.returncode}): {tail}"
    else:
        r = found[-1]
        row["status"] = "ok"
        row["compile_seconds"] = r["compile_seconds"]
        row["seconds_per_step"] = r["seconds_per_step"]
        row["user_100_steps_seconds"] = round(r["compile_seconds"] + 100 * r["seconds_per_step"], 2)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=DEFAULT_SETTINGS)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--limit", type=float, default=90.0, help="seconds per setting")
    p.add_argument("--out", type=Path, help="JSON file with every row")
    p.add_argument("--pick", type=Path, help="write the winner's XLA_FLAGS and cache folder")
    p.add_argument("--cache-root", type=Path, help="where the per-setting caches go [tmp]")
    args = p.parse_args(argv)
    root = args.cache_root or Path(tempfile.mkdtemp(prefix="nstjax_probe_"))
    rows = []
    for name in args.settings:
        row = probe(name, args.size, args.steps, args.limit, root / name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        os.replace(tmp, args.out)
    good = [r for r in rows if r["status"] == "ok"]
    if not good:
        print("no setting compiled and ran within its limit", file=sys.stderr)
        return 1
    best = min(good, key=lambda r: r["user_100_steps_seconds"])
    print(
        f"best: {best['setting']} ({best['user_100_steps_seconds']} s for compile + 100 steps)",
        file=sys.stderr,
    )
    if args.pick:
        args.pick.write_text(f"{best['xla_flags']}\n{best['cache']}\n{best['conv_impl']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
