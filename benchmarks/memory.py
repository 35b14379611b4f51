"""Peak memory of a Gatys step and of a whole run per image size, with XLA's buffer assignment.

    python benchmarks/memory.py                                # 512 1024 2048
    python benchmarks/memory.py --sizes 64 --steps 3 --out memory.json
    python benchmarks/memory.py --tile 512 --memory-size 10          # tiled gradients
    python benchmarks/memory.py --sizes 2048 --phases run --tile 512 --memory-size 10 \
        --pyramid 100,30,10 --save out/highres                       # 512 -> 1024 -> 2048

For every size (a square ``size`` x ``size`` image: tubingen.jpg content, starry_night.jpg
style, content relu4_2, the five Gatys style layers, max pooling, L-BFGS with 100 pairs,
as benchmarks/gatys_speed.py), two fresh processes:

* ``step``: ``gatys.prepare`` (weights, images, targets), the step program compiled by
  ``engine.single_runner(job, 1, "host")``, and one step. Reports XLA's buffer
  assignment of that compiled step (``memory_analysis()``: arguments, outputs, aliased
  (donated) bytes, temporaries, generated code) and the measured peak after the step.
* ``run``: a whole run of ``--steps`` steps as ``nstjax.stylize`` makes it (the default
  loop: dispatched steps on CPU, compiled chunks on GPU/TPU; final losses; the image).

"Peak" is the process's peak RSS (``VmHWM``) on CPU, and on a GPU/TPU the device's
``peak_bytes_in_use`` (``jax.local_devices()[0].memory_stats()``; host RSS is reported
too). Both are reported as bytes per image pixel, of the whole peak and of the part
above the process's baseline (RSS after importing JAX and nstjax). By default the
processes use nstjax's persistent compilation cache as ``nstjax stylize`` does (a
program read from it costs no compile memory); ``--cache fresh`` gives each process an
empty one (everything compiles; compile memory included on CPU), ``--cache off`` none.

Sizes run in increasing order. Before each, its peak is extrapolated from the smaller
sizes measured (:func:`extrapolate`; on CPU also nstjax's own estimate, where the library
has one) and compared with the memory available (``MemAvailable``, or the device's
``bytes_limit``); a size expected to exceed ``--headroom`` of it is skipped with a note,
as are the larger ones, and a size whose process fails (out of memory, refused by
nstjax's own check, timed out) stops the sweep with its last line as the note. Prints one JSON
line per size, then a markdown table; ``--out`` writes the rows as JSON.
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

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"
MIB = 2**20
ANALYSIS_FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
    "host_argument_size_in_bytes",
    "host_output_size_in_bytes",
    "host_alias_size_in_bytes",
    "host_temp_size_in_bytes",
    "host_generated_code_size_in_bytes",
    "peak_memory_in_bytes",
)


# --- in the child process -------------------------------------------------------------


def proc_status() -> dict:
    """VmRSS and VmHWM (peak RSS) of this process, bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def device_stats() -> dict | None:
    import jax

    stats = jax.local_devices()[0].memory_stats()
    if not stats:
        return None
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if k in stats}


def analysis(compiled) -> dict:
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    out = {}
    for field in ANALYSIS_FIELDS:
        value = getattr(ma, field, None)
        if value is not None:
            out[field.replace("_size_in_bytes", "").replace("_in_bytes", "")] = int(value)
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def settings_for(size: int, steps: int, args):
    """``--pyramid A,B,C``: a coarse-to-fine run size/4 -> size/2 -> size (A, B, C steps)."""
    from nstjax.settings import Settings

    pyramid = tuple(int(x) for x in args.pyramid.split(",")) if args.pyramid else ()
    scales = tuple(size >> (len(pyramid) - 1 - i) for i in range(len(pyramid)))
    return Settings(
        size=size,
        steps=steps,
        optimizer=args.optimizer,
        conv_impl=args.conv_impl,
        content_layers=("relu4_2",),
        pooling="max",
        memory_size=args.memory_size,
        tile=args.tile,
        scales=scales,
        scale_steps=pyramid,
    )


def child(size: int, phase: str, args) -> dict:
    import nstjax

    nstjax.setup()  # the CLI's process defaults (XLA flags, malloc, compilation cache)
    import jax

    from nstjax import engine, gatys, image, monitor

    dev = jax.local_devices()[0]
    baseline = proc_status()["VmRSS"]
    content = image.load(IMAGES / "tubingen.jpg", size=(size, size))
    style = image.load(IMAGES / "starry_night.jpg", size=(size, size))
    row = {
        "size": size,
        "phase": phase,
        "height": size,
        "width": size,
        "pixels": size * size,
        "backend": jax.default_backend(),
        "device": str(dev),
        "device_kind": dev.device_kind,
        "rss_baseline": baseline,
    }
    with monitor.count_compiles() as compiles:
        if phase == "step":
            settings = settings_for(size, 1, args).replace(scales=(), scale_steps=())
            job = gatys.prepare(settings, content, [style])
            row["rss_prepared"] = proc_status()["VmRSS"]
            row["device_prepared"] = device_stats()
            runner, state, ctx = engine.single_runner(job, 1, "host")
            row["compile_seconds"] = runner.compile_seconds
            row["rss_compiled"] = proc_status()["VmRSS"]
            if hasattr(runner, "_grad"):  # tiled: the largest tile's gradient program
                row["analysis"] = analysis(
                    max(runner._grad.items(), key=lambda kv: kv[0][0] * kv[0][1])[1]
                )
            else:
                row["analysis"] = analysis(runner._compiled)
            row["params_bytes"] = sum(x.nbytes for x in jax.tree.leaves(ctx["vgg"]))
            t0 = time.perf_counter()
            state, _ = runner(state, 1, ctx)
            jax.block_until_ready(state)
            row["step_seconds"] = time.perf_counter() - t0
            estimate = getattr(job, "memory_estimate", None)
        else:
            settings = settings_for(size, args.steps, args)
            t0 = time.perf_counter()
            out = Path(args.save) / f"run_{size}.png" if args.save else None
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
            _, m = gatys.stylize(content, [style], settings=settings, output=out)
            row["seconds"] = time.perf_counter() - t0
            row["steps"] = m.get("steps")
            row["compile_seconds"] = m.get("compile_seconds")
            row["loop"] = m.get("loop")
            estimate = m.get("memory_estimate")
    status = proc_status()
    row["rss_peak"] = status["VmHWM"]
    row["device_memory"] = device_stats()
    row["compiles"] = {"compiled": compiles.count, "cache_hits": compiles.cache_hits}
    row["settings"] = {
        k: v
        for k, v in settings.as_dict().items()
        if k
        in (
            "optimizer",
            "memory_size",
            "conv_impl",
            "loop",
            "pooling",
            "remat",
            "tile",
            "scales",
            "scale_steps",
        )  # fmt: skip
    }
    if estimate:
        row["nstjax_estimate"] = {k: v for k, v in estimate.items() if k != "available"}
    dm = row["device_memory"]
    row["peak"] = dm["peak_bytes_in_use"] if dm and "peak_bytes_in_use" in dm else status["VmHWM"]
    row["peak_kind"] = "device" if dm and "peak_bytes_in_use" in dm else "rss"
    return row


# --- in the parent process ------------------------------------------------------------


def mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def capacity(row: dict) -> int | None:
    """Bytes the measured quantity may reach: the device's limit, else MemAvailable."""
    dm = row.get("device_memory") or {}
    if row.get("peak_kind") == "device" and dm.get("bytes_limit"):
        return dm["bytes_limit"]
    return mem_available()


def extrapolate(measured: list[dict], pixels: int) -> int:
    """Peak at ``pixels`` from smaller sizes: a line through the last two measured peaks;
    from one, its peak plus 1.5 x the step's pixel-proportional buffers (XLA's total less
    the VGG params) for every added multiple of its pixels."""
    if len(measured) >= 2:
        a, b = measured[-2], measured[-1]
        slope = max(0.0, (b["peak"] - a["peak"]) / max(1, b["pixels"] - a["pixels"]))
        return int(b["peak"] + slope * (pixels - b["pixels"]))
    prev = measured[-1]
    scaling = prev.get("scaling_bytes") or prev["peak"]
    return int(prev["peak"] + 1.5 * scaling * (pixels / prev["pixels"] - 1))


def library_estimate(size: int, args) -> int | None:
    """nstjax's own estimate (nstjax.memory, where the library has it), bytes."""
    import nstjax

    nstjax.setup()
    try:
        from nstjax import memory
    except ImportError:
        return None
    try:
        from nstjax import vgg

        halo = vgg.halo(("relu4_2", "relu5_1"))
        crop = min(size, args.tile + 2 * halo) if args.tile and size > args.tile else None
        e = memory.estimate(size, size, "relu5_1", memory_size=args.memory_size,
                            tile_hw=crop and (crop, crop))  # fmt: skip
    except Exception:  # noqa: BLE001  (its signature may change; this is only a hint)
        return None
    return int(e["total"])


def spawn(size: int, phase: str, args, env: dict) -> tuple[dict | None, str | None]:
    cmd = [
        sys.executable, __file__, "--one", str(size), "--phase", phase,
        "--steps", str(args.steps), "--optimizer", args.optimizer, "--conv-impl", args.conv_impl,
        "--memory-size", str(args.memory_size), "--tile", str(args.tile),
        "--pyramid", args.pyramid, "--save", args.save,
    ]  # fmt: skip
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=args.timeout, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return None, f"{phase} at {size}: timed out after {args.timeout:.0f} s"
    if res.returncode != 0:
        lines = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()
        why = "killed (out of memory?)" if res.returncode in (-9, 137) else lines[-1]
        return None, f"{phase} at {size}: exit {res.returncode}: {why}"
    return json.loads(res.stdout.strip().splitlines()[-1]), None


def summarize(size: int, step: dict | None, run: dict | None, note: str | None) -> dict:
    row: dict = {"size": size, "pixels": size * size, "note": note, "step": step, "run": run}
    px = size * size
    for name, r in (("step", step), ("run", run)):
        if r is None:
            continue
        base = r["rss_baseline"] if r["peak_kind"] == "rss" else 0
        row[f"{name}_peak_bytes"] = r["peak"]
        row[f"{name}_peak_bytes_per_pixel"] = r["peak"] / px
        row[f"{name}_above_baseline_bytes_per_pixel"] = (r["peak"] - base) / px
        row["peak_kind"] = r["peak_kind"]
    if step and step.get("analysis"):
        a = step["analysis"]
        row["xla_temp_bytes_per_pixel"] = a["temp"] / px
        row["xla_total_bytes_per_pixel"] = a["total"] / px
    return row


def table(rows: list[dict]) -> str:
    def mib(x):
        return "-" if x is None else f"{x / MIB:,.0f}"

    kind = next((r["peak_kind"] for r in rows if r.get("peak_kind")), "rss")
    what = "device peak_bytes_in_use" if kind == "device" else "peak RSS"
    lines = [
        f"Peak = {what}; MiB unless B/px (bytes per image pixel); XLA = buffer assignment of "
        "the compiled step",
        "",
        "| size | step peak | run peak | run B/px | above base B/px | XLA args | out | alias "
        "| temp | code | XLA total | XLA B/px | nstjax est. | note |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- |",
    ]
    for r in rows:
        a = (r.get("step") or {}).get("analysis") or {}
        xla_bpp = f"{a['total'] / r['pixels']:,.0f}" if a else "-"
        est = ((r.get("run") or r.get("step") or {}).get("nstjax_estimate") or {}).get("total")
        run_bpp = r.get("run_peak_bytes_per_pixel")
        above = r.get(
            "run_above_baseline_bytes_per_pixel", r.get("step_above_baseline_bytes_per_pixel")
        )
        lines.append(
            f"| {r['size']} | {mib(r.get('step_peak_bytes'))} | {mib(r.get('run_peak_bytes'))} "
            f"| {'-' if run_bpp is None else f'{run_bpp:,.0f}'} "
            f"| {'-' if above is None else f'{above:,.0f}'} "
            f"| {mib(a.get('argument'))} | {mib(a.get('output'))} | {mib(a.get('alias'))} "
            f"| {mib(a.get('temp'))} | {mib(a.get('generated_code'))} | {mib(a.get('total'))} "
            f"| {xla_bpp} | {mib(est)} "
            f"| {r.get('note') or ''} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--steps", type=int, default=10, help="steps of the whole run [10]")
    p.add_argument("--phases", nargs="+", choices=("step", "run"), default=["step", "run"])
    p.add_argument("--optimizer", default="lbfgs")
    p.add_argument("--conv-impl", default="auto")
    p.add_argument("--memory-size", type=int, default=100, help="L-BFGS pairs [100]")
    p.add_argument("--tile", type=int, default=0, help="tiled gradients: core px [0: off]")
    p.add_argument("--pyramid", default="", help="run phase: steps A,B,.. of size/2^k levels")
    p.add_argument("--save", default="", help="run phase: write the output image here")
    p.add_argument("--cache", choices=("default", "fresh", "off"), default="default")
    p.add_argument("--headroom", type=float, default=0.9, help="fraction of memory to use")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=("step", "run"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(child(args.one, args.phase, args)))
        return []

    rows: list[dict] = []
    measured: list[dict] = []  # the larger of each measured size's step and run peaks
    stop: str | None = None
    with tempfile.TemporaryDirectory(prefix="nstjax-memory-") as tmp:
        for i, size in enumerate(sorted(args.sizes)):
            if stop:
                rows.append(summarize(size, None, None, f"skipped: {stop}"))
                print(json.dumps(rows[-1]), flush=True)
                continue
            px = size * size
            if measured:
                prev = measured[-1]
                need = extrapolate(measured, px)
                cap = capacity(prev)
                lib = library_estimate(size, args) if prev["peak_kind"] == "rss" else None
                if cap is not None and max(need, lib or 0) > args.headroom * cap:
                    stop = (
                        f"{size} px needs ~{max(need, lib or 0) / 2**30:.1f} GiB "
                        f"(extrapolated from {prev['size']} px"
                        + (f", nstjax estimate {lib / 2**30:.1f} GiB" if lib else "")
                        + f"), {cap / 2**30:.1f} GiB available"
                    )
                    rows.append(summarize(size, None, None, f"skipped: {stop}"))
                    print(json.dumps(rows[-1]), flush=True)
                    continue
            env = dict(os.environ)
            results: dict = {}
            note = None
            for phase in args.phases:
                if args.cache == "off":
                    env["NSTJAX_COMPILE_CACHE"] = "0"
                elif args.cache == "fresh":
                    env["NSTJAX_COMPILE_CACHE"] = str(Path(tmp) / f"xla-{i}-{phase}")
                results[phase], note = spawn(size, phase, args, env)
                if note:
                    stop = note
                    break
            rows.append(summarize(size, results.get("step"), results.get("run"), note))
            print(json.dumps(rows[-1]), flush=True)
            done = [r for r in results.values() if r]
            if done:
                top = dict(max(done, key=lambda r: r["peak"]))
                step = results.get("step") or {}
                if step.get("analysis") and "params_bytes" in step:
                    top["scaling_bytes"] = step["analysis"]["total"] - step["params_bytes"]
                measured.append(top)
    print()
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
