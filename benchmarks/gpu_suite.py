"""The GPU session's benchmarks in one run, every figure in one JSON file.

    python benchmarks/gpu_suite.py --out gpu_suite.json          # (bash benchmarks/gpu_suite.sh)
    python benchmarks/gpu_suite.py --dry-run --out /tmp/s.json   # CPU, tiny sizes, no install

Usually started by ``benchmarks/gpu_suite.sh``, which first makes JAX see the GPU (and
fetches the weights). Parts, in this order, each a subprocess under coreutils
``timeout`` (its whole process group is killed at the limit; what it printed by then is
kept) and all together within ``--budget`` seconds (default 8 minutes, counted from
``--start``), run in the order env, step, memory, sweep, arbitrary (``RUN_ORDER``):

``env``        jax/jaxlib versions, backend, devices, device memory, nvidia-smi.
``step``       benchmarks/gatys_speed.py at 512 and 1024: steady-state seconds per
               Gatys step, compile seconds, peak memory.
``arbitrary``  the fast network at 1024x1024 with batches of 1 and 8 content images
               (``nstjax.arbitrary.stylize_jit``: style predictor + transformer, inputs
               already on the device): ms per batch and images per second (here, since
               benchmarks/arbitrary_speed.py times single images against onnxruntime).
``memory``     benchmarks/memory.py at 512 and 1024: peak device memory of a step and
               of a whole run, XLA's buffer assignment, bytes per pixel.
``sweep``      benchmarks/sweep_speed.py at 512 px: the Fig. 3 sweep batched (one
               ``nstjax run``) vs one variant at a time (4 x one run per row).

The JSON holds ``suite`` (what ran, when, how long), one object per part (``status``:
ok | timeout | failed | skipped, ``seconds``, ``note``, its rows) and ``figures``: the
headline numbers flat, ``{name: positive number}``. ``--dry-run`` runs the same parts on
the CPU (``JAX_PLATFORMS=cpu``) at tiny sizes and steps (the sweep's first two rows only)
and gives the same structure; it runs the sweep beside the other parts (``--jobs 2``:
XLA:CPU compiles on one thread), so its timings mean nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
IMAGES = ROOT.parent / "shared" / "images"
PARTS = ("env", "step", "arbitrary", "memory", "sweep")  # the JSON's order
# The order they run in: ``memory`` right after ``step``, whose compiled programs it reuses
# from the persistent cache (same shapes at 512 and 1024); the fast network, whose every
# batch size compiles afresh, last.
RUN_ORDER = ("env", "step", "memory", "sweep", "arbitrary")

# part: {"real": parameters on the GPU, "dry": parameters of --dry-run}
PLAN = {
    "step": {
        "real": {"sizes": [512, 1024], "steps": 10, "warmup": 5},
        "dry": {"sizes": [32], "steps": 2, "warmup": 1},
    },
    "arbitrary": {
        "real": {"size": 1024, "batches": [1, 8], "runs": 5},
        "dry": {"size": 64, "batches": [1, 2], "runs": 2},
    },
    "memory": {
        "real": {"sizes": [512, 1024], "steps": 10},
        "dry": {"sizes": [32, 48], "steps": 2},
    },
    "sweep": {
        # 20 steps: 20 variants x 50 steps at the untuned 0.79 s a 512 px step did not fit
        "real": {"size": 512, "steps": 20, "batch_size": 20},
        "dry": {"size": 32, "steps": 2, "batch_size": 20, "rows": 2},
    },
}
# On the H200 lent on 2026-12-04 (jax 0.11.2), with nstjax's GPU defaults (Winograd F(2x2),
# --xla_gpu_autotune_level=0) the parts took: step 52 s, memory 85 s, the batched sweep
# 137-158 s (then 18-19 s per one-at-a-time run: the sweep needs ~235 s for its five),
# arbitrary 16 s.
TIMEOUTS = {"env": 60, "step": 200, "arbitrary": 120, "memory": 120, "sweep": 270}


# --- parts that run inside a child process -------------------------------------------


def part_env() -> dict:
    import nstjax

    nstjax.setup()
    import jax
    import jaxlib

    dev = jax.local_devices()[0]
    stats = dev.memory_stats() or {}
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": dev.device_kind,
        "device_bytes_limit": stats.get("bytes_limit"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def part_arbitrary(size: int, batches: list[int], runs: int) -> None:
    """Prints one JSON line per batch size: the fast network's throughput."""
    import nstjax

    nstjax.setup()
    import jax
    import numpy as np

    from nstjax import arbitrary, image

    params = jax.device_put(arbitrary.load_params())
    content = image.load(IMAGES / "tubingen.jpg", size=(size, size)) / 255.0
    style = jax.device_put(image.load(IMAGES / "starry_night.jpg", 256)[None] / 255.0)
    for batch in batches:
        contents = jax.device_put(
            np.ascontiguousarray(np.broadcast_to(content, (batch,) + content.shape))
        )
        try:
            t0 = time.perf_counter()
            arbitrary.stylize_jit(params, contents, style).block_until_ready()
            first = time.perf_counter() - t0
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                arbitrary.stylize_jit(params, contents, style).block_until_ready()
                times.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001  (out of device memory: report, stop)
            print(json.dumps({"batch": batch, "error": f"{type(e).__name__}: {e}"[:300]}))
            break
        median = statistics.median(times)
        row = {
            "size": size,
            "batch": batch,
            "runs": runs,
            "first_call_seconds": first,  # compile + one run
            "ms_per_batch": median * 1000.0,
            "ms_per_image": median * 1000.0 / batch,
            "images_per_second": batch / median,
            "backend": jax.default_backend(),
        }
        print(json.dumps(row), flush=True)
        del contents


# --- the parent -------------------------------------------------------------------------


def json_lines(text: str) -> list[tuple[str, dict]]:
    """(prefix, object) for every line that ends in a JSON object ('key {...}' or '{...}')."""
    out = []
    for line in text.splitlines():
        i = line.find("{")
        if i < 0 or not line.rstrip().endswith("}"):
            continue
        try:
            out.append((line[:i].strip(), json.loads(line[i:])))
        except json.JSONDecodeError:
            continue
    return out


def run_part(cmd: list[str], limit: float, env: dict) -> tuple[str, str, float, str | None]:
    """(status, stdout, seconds, note) of ``cmd`` under ``timeout``."""
    if limit < 5:
        return "skipped", "", 0.0, "no time left in the budget"
    t0 = time.perf_counter()
    full = ["timeout", "-k", "10", f"{int(limit)}", *cmd]
    res = subprocess.run(full, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if res.returncode == 124 or res.returncode == 137:
        tail = " | ".join(res.stderr.strip().splitlines()[-3:])[-400:]
        note = f"stopped at its {int(limit)} s limit" + (f"; stderr ends: {tail}" if tail else "")
        return "timeout", res.stdout, seconds, note
    if res.returncode != 0:
        lines = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()
        return "failed", res.stdout, seconds, f"exit {res.returncode}: {lines[-1][:300]}"
    return "ok", res.stdout, seconds, None


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def do_env(env: dict, limit: float, p: dict) -> tuple[dict, dict]:
    status, out, secs, note = run_part([sys.executable, __file__, "--part", "env"], limit, env)
    result = {"status": status, "seconds": secs, "note": note}
    found = json_lines(out)
    if found:
        result.update(found[-1][1])
    if shutil.which("nvidia-smi"):
        q = "name,driver_version,memory.total,clocks.max.sm"
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        result["nvidia_smi"] = smi.stdout.strip()
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        result["git_commit"] = rev.stdout.strip() or None
    except OSError:
        result["git_commit"] = None
    return result, {}


def do_step(env: dict, limit: float, p: dict) -> tuple[dict, dict]:
    cmd = [sys.executable, str(BENCH / "gatys_speed.py"), "--sizes", *map(str, p["sizes"])]
    cmd += ["--steps", str(p["steps"]), "--warmup", str(p["warmup"])]
    cmd += ["--conv-impl", p["conv_impl"]]
    status, out, secs, note = run_part(cmd, limit, env)
    rows = [obj for prefix, obj in json_lines(out) if not prefix and "seconds_per_step" in obj]
    figures = {}
    for r in rows:
        s = r["size"]
        figures[f"step_{s}_seconds_per_step"] = r["seconds_per_step"]
        figures[f"step_{s}_compile_seconds"] = r["compile_seconds"]
        if r.get("peak_device_bytes"):
            figures[f"step_{s}_peak_device_bytes"] = r["peak_device_bytes"]
        figures[f"step_{s}_peak_rss_mib"] = r["peak_rss_mib"]
    result = {"status": status, "seconds": secs, "note": note, "params": p, "rows": rows}
    return result, figures


def do_arbitrary(env: dict, limit: float, p: dict) -> tuple[dict, dict]:
    cmd = [sys.executable, __file__, "--part", "arbitrary", "--size", str(p["size"])]
    cmd += ["--batches", *map(str, p["batches"]), "--runs", str(p["runs"])]
    status, out, secs, note = run_part(cmd, limit, env)
    rows = [obj for _, obj in json_lines(out) if "batch" in obj]
    good = [r for r in rows if "images_per_second" in r]
    errors = [r for r in rows if "error" in r]
    if errors and note is None:
        note = f"batch {errors[0]['batch']}: {errors[0]['error']}"
    figures = {}
    for r in good:
        key = f"arbitrary_{r['size']}_batch{r['batch']}"
        figures[f"{key}_images_per_second"] = r["images_per_second"]
        figures[f"{key}_first_call_seconds"] = r["first_call_seconds"]
    result = {"status": status, "seconds": secs, "note": note, "params": p, "rows": rows}
    if good:
        best = max(good, key=lambda r: r["images_per_second"])
        result["best_batch"] = best["batch"]
        result["best_images_per_second"] = best["images_per_second"]
        figures[f"arbitrary_{p['size']}_best_images_per_second"] = best["images_per_second"]
        one = [r for r in good if r["batch"] == 1]
        if one:
            result["speedup_vs_batch1"] = best["images_per_second"] / one[0]["images_per_second"]
            figures[f"arbitrary_{p['size']}_batching_speedup"] = result["speedup_vs_batch1"]
    return result, figures


def do_memory(env: dict, limit: float, p: dict) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "memory.json"
        cmd = [sys.executable, str(BENCH / "memory.py"), "--sizes", *map(str, p["sizes"])]
        cmd += ["--steps", str(p["steps"]), "--out", str(out_json)]
        cmd += ["--conv-impl", p["conv_impl"]]
        cmd += ["--timeout", str(max(30, int(limit)))]
        status, out, secs, note = run_part(cmd, limit, env)
        if out_json.is_file():
            rows = json.loads(out_json.read_text())
        else:  # stopped early: the rows printed so far
            rows = [obj for prefix, obj in json_lines(out) if not prefix and "pixels" in obj]
    figures = {}
    for r in rows:
        s = r["size"]
        for key in ("step_peak_bytes", "run_peak_bytes", "run_peak_bytes_per_pixel"):
            if positive(r.get(key)):
                figures[f"memory_{s}_{key}"] = r[key]
        a = (r.get("step") or {}).get("analysis") or {}
        if positive(a.get("temp")):
            figures[f"memory_{s}_xla_temp_bytes"] = a["temp"]
            figures[f"memory_{s}_xla_total_bytes"] = a["total"]
    notes = [r["note"] for r in rows if r.get("note")]
    if notes and note is None:
        note = "; ".join(notes)
    result = {"status": status, "seconds": secs, "note": note, "params": p, "rows": rows}
    return result, figures


def do_sweep(env: dict, limit: float, p: dict) -> tuple[dict, dict]:
    cmd = [sys.executable, str(BENCH / "sweep_speed.py"), "--size", str(p["size"])]
    cmd += ["--steps", str(p["steps"]), "--batch-size", str(p["batch_size"])]
    cmd += ["--rows", str(p.get("rows", 5)), "--conv-impl", p["conv_impl"]]
    status, out, secs, note = run_part(cmd, limit, env)
    parts = {prefix: obj for prefix, obj in json_lines(out) if prefix}
    result = {"status": status, "seconds": secs, "note": note, "params": p}
    result["batched"] = parts.get("batched")
    result["single"] = {k: v for k, v in parts.items() if k.startswith("single_row")}
    figures = {}
    b = result["batched"]
    if b:
        result["batched_seconds"] = b["seconds"]
        result["step_programs"] = b.get("step_programs")
        result["groups"] = b.get("groups")
        figures["sweep_batched_seconds"] = b["seconds"]
    if result["single"] and len(result["single"]) == p.get("rows", 5):
        one_at_a_time = 4 * sum(v["seconds"] for v in result["single"].values())
        result["one_at_a_time_seconds"] = one_at_a_time
        figures["sweep_one_at_a_time_seconds"] = one_at_a_time
        if b:
            result["ratio"] = b["seconds"] / one_at_a_time
            figures["sweep_batched_over_one_at_a_time"] = result["ratio"]
    return result, figures


STEPS = {
    "env": do_env,
    "step": do_step,
    "arbitrary": do_arbitrary,
    "memory": do_memory,
    "sweep": do_sweep,
}


def suite(args) -> dict:
    start = args.start or time.time()
    deadline = start + args.budget
    env = dict(os.environ)
    if args.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    result: dict = {
        "suite": {
            "dry_run": args.dry_run,
            "started": datetime.datetime.fromtimestamp(start, datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "budget_seconds": args.budget,
            "setup_seconds": time.time() - start if args.start else 0.0,
            "parts": list(args.parts),
            "jobs": args.jobs,
            "conv_impl": args.conv_impl,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "python": sys.executable,
        }
    }
    figures: dict = {}

    def one(name: str) -> None:
        limit = min(TIMEOUTS[name] * (2 if args.dry_run else 1), deadline - time.time())
        params = PLAN[name]["dry" if args.dry_run else "real"] if name in PLAN else {}
        if name in ("step", "memory", "sweep"):
            params = {**params, "conv_impl": args.conv_impl}
        part, figs = STEPS[name](env, limit, params)
        result[name] = part
        figures.update({k: v for k, v in figs.items() if positive(v)})
        print(
            f"[{name}] {part['status']} in {part['seconds']:.0f} s"
            + (f": {part['note']}" if part.get("note") else ""),
            flush=True,
        )

    todo = [name for name in RUN_ORDER if name in args.parts]
    for name in PARTS:
        if name not in todo:
            result[name] = {"status": "skipped", "seconds": 0.0, "note": "not requested"}
    if args.jobs > 1 and "sweep" in todo and len(todo) > 1:
        # --dry-run: the sweep (the longest part) beside the others; XLA:CPU compiles on
        # one thread, so two lanes nearly halve the wall time on two cores.
        lanes = [["sweep"], [n for n in todo if n != "sweep"]]
        with concurrent.futures.ThreadPoolExecutor(len(lanes)) as pool:
            for f in [pool.submit(lambda lane=lane: [one(n) for n in lane]) for lane in lanes]:
                f.result()
    else:
        for name in todo:
            one(name)
    result["suite"]["seconds"] = time.time() - start
    ordered = {"suite": result["suite"], **{n: result[n] for n in PARTS}}
    ordered["figures"] = dict(sorted(figures.items()))
    return ordered


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu_suite.json"))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (about a minute)")
    p.add_argument("--budget", type=float, help="seconds for everything [480; --dry-run: 600]")
    p.add_argument("--start", type=float, help="epoch seconds the budget counts from")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument(
        "--jobs", type=int, help="parts at once: 1 (default; timings) or 2 (--dry-run default)"
    )
    p.add_argument(
        "--conv-impl",
        default="auto",
        help="the Gatys parts' convolution (nstjax.conv.CONV_IMPLS; gpu_suite.sh --probe "
        "passes the probe's winner) [auto]",
    )
    p.add_argument("--part", choices=("env", "arbitrary"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help=argparse.SUPPRESS)
    p.add_argument("--runs", type=int, default=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 600.0 if args.dry_run else 480.0
    if args.jobs is None:
        args.jobs = 2 if args.dry_run else 1
    if args.part == "env":
        print(json.dumps(part_env()))
        return
    if args.part == "arbitrary":
        part_arbitrary(args.size, args.batches, args.runs)
        return
    result = suite(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"wrote {args.out} ({len(result['figures'])} figures, {result['suite']['seconds']:.0f} s)"
    )
    for key, value in result["figures"].items():
        print(f"  {key}: {value:.4g}")


if __name__ == "__main__":
    main()
