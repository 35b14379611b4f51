"""The benchmark scripts run and say what they claim, at tiny sizes on the CPU.

* ``bash benchmarks/gpu_suite.sh --dry-run``: every part ok, the JSON's keys, positive
  figures (it runs benchmarks/memory.py, gatys_speed.py and sweep_speed.py inside);
* ``benchmarks/wall_vs_pastiche.py``: argument parsing, pastiche's size rules, the child
  measurement (wall time and a known peak RSS), and a ``--no-pastiche`` run (cold, warm);
* ``benchmarks/arbitrary_command.py``: a ``--no-peer`` run (cold, warm) and a bad image;
* ``benchmarks/memory.py``: the extrapolation that decides which sizes are skipped.

The subprocesses use the session's weight cache and a persistent compilation cache in
it (the suite's own default, ``NSTJAX_COMPILE_CACHE=0``, would compile every program).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench_env(cache_env, images) -> dict:
    env = dict(os.environ)
    env["NSTJAX_COMPILE_CACHE"] = str(cache_env / "xla")
    env.pop("JAX_PLATFORMS", None)
    return env


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def test_gpu_suite_dry_run(tmp_path, bench_env):
    out = tmp_path / "s.json"
    res = subprocess.run(
        ["bash", str(BENCH / "gpu_suite.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=bench_env,
        cwd=tmp_path,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    s = json.loads(out.read_text())
    assert list(s) == ["suite", "env", "step", "arbitrary", "memory", "sweep", "figures"]
    assert s["suite"]["dry_run"] is True and _positive(s["suite"]["seconds"])
    for part in ("env", "step", "arbitrary", "memory", "sweep"):
        assert s[part]["status"] == "ok", (part, s[part].get("note"))
        assert _positive(s[part]["seconds"])
    assert s["env"]["backend"] == "cpu" and s["env"]["jax"]

    step = s["step"]["rows"]
    assert [r["size"] for r in step] == [32]
    for r in step:
        for key in ("seconds_per_step", "compile_seconds", "peak_rss_mib"):
            assert _positive(r[key]), (key, r)

    arb = s["arbitrary"]
    assert [r["batch"] for r in arb["rows"]] == [1, 2]
    for r in arb["rows"]:
        assert _positive(r["images_per_second"]) and _positive(r["ms_per_batch"])
        assert r["size"] == 64
    assert _positive(arb["best_images_per_second"]) and _positive(arb["speedup_vs_batch1"])

    mem = s["memory"]["rows"]
    assert [r["size"] for r in mem] == [32, 48]
    for r in mem:
        assert r["note"] is None
        assert r["peak_kind"] == "rss"
        for phase in ("step", "run"):
            assert _positive(r[f"{phase}_peak_bytes"])
            assert r[phase]["rss_peak"] >= r[phase]["rss_baseline"] > 0
        a = r["step"]["analysis"]
        for key in ("argument", "output", "temp", "total"):
            assert _positive(a[key]), (key, a)
        assert a["total"] == a["argument"] + a["output"] - a["alias"] + a["temp"]
        assert _positive(r["xla_total_bytes_per_pixel"])
    # the image's own buffers (the arguments: image + optimizer state) grow with
    # its pixels. XLA's temp at these tiny sizes is not monotonic: the CPU's
    # conv algorithm choice (AVX-512 or not) changes its scratch space.
    assert mem[1]["step"]["analysis"]["argument"] > mem[0]["step"]["analysis"]["argument"]

    sweep = s["sweep"]
    assert set(sweep["single"]) == {"single_row0", "single_row1"}  # the dry run's two rows
    assert sweep["groups"] == 2 and sweep["step_programs"] == 2
    assert sweep["batched"]["variants"] == 8
    for key in ("batched_seconds", "one_at_a_time_seconds", "ratio"):
        assert _positive(sweep[key]), key

    figures = s["figures"]
    for key in (
        "step_32_seconds_per_step",
        "arbitrary_64_best_images_per_second",
        "memory_48_step_peak_bytes",
        "memory_48_xla_temp_bytes",
        "sweep_batched_over_one_at_a_time",
    ):
        assert key in figures, key
    assert figures and all(_positive(v) for v in figures.values()), figures


def test_wall_vs_pastiche_arguments_and_rules(tmp_path):
    w = _module("wall_vs_pastiche")
    args = w.parse_args(["--no-pastiche", "--size", "32", "--steps", "2", "--rounds", "1"])
    assert (args.size, args.steps, args.rounds, args.no_pastiche) == (32, 2, 1, True)
    assert args.pastiche_python == w.DEFAULT_PASTICHE_PYTHON and args.out is None
    for bad in (["--size", "0"], ["--rounds", "0"], ["--content", str(tmp_path / "no.jpg")]):
        with pytest.raises(SystemExit):
            w.parse_args(bad)
    # pastiche 1.6.0's sizes: long side for the content, the content's pixels for the style
    assert w.pastiche_dims(1024, 768, size=512) == (512, 384)
    assert w.pastiche_dims(1024, 640, pixels=512 * 384) == (562, 351)
    cmd = w.pastiche_cmd(args, tmp_path / "p.png")
    assert cmd[1:3] == ["-m", "pastiche"] and "--num-steps" in cmd
    assert cmd[cmd.index("--style-layers") + 1 :][:5] == [f"block{i}_relu1" for i in range(1, 6)]
    cmd = w.nstjax_cmd(args, tmp_path / "n.png", tmp_path / "m.json", 562 / 512)
    assert cmd[1:4] == ["-m", "nstjax", "stylize"]
    assert cmd[cmd.index("--content-layers") + 1] == "relu4_2"
    assert cmd[cmd.index("--pool-rounding") + 1] == "floor"

    # the child's own peak RSS, from os.wait4
    code = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    row = w.run_child([sys.executable, "-c", code], dict(os.environ), tmp_path / "log", 60)
    assert row["rc"] == 0 and not row["timed_out"] and row["wall_s"] > 0
    # ru_maxrss also counts the pages the child shared with this (large) pytest process
    # between fork and exec; the benchmark forks from a small parent
    assert 300 < row["peak_rss_mib"] < 3000
    row = w.run_child([sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "log", 60)
    assert row["rc"] == 3
    row = w.run_child([sys.executable, "-c", "import time; time.sleep(30)"], {}, tmp_path / "l", 1)
    assert row["timed_out"] and row["rc"] != 0 and row["wall_s"] < 20


def test_wall_vs_pastiche_nstjax_only(tmp_path, bench_env):
    out = tmp_path / "wall.json"
    cmd = [sys.executable, str(BENCH / "wall_vs_pastiche.py"), "--no-pastiche"]
    cmd += ["--size", "32", "--steps", "1", "--rounds", "1", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=bench_env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "| nstjax cold | 1 |" in res.stdout and "| nstjax warm | 1 |" in res.stdout
    r = json.loads(out.read_text())
    assert set(r) == {"settings", "versions", "commands", "runs", "summary", "ratios"}
    assert set(r["summary"]) == {"nstjax cold", "nstjax warm"} and r["ratios"] == {}
    cold, warm = r["runs"]
    assert (cold["mode"], warm["mode"]) == ("cold", "warm")
    for run in (cold, warm):
        assert run["rc"] == 0 and run["wall_s"] > 0 and run["peak_rss_mib"] > 100
        assert run["tree_peak_rss_mib"] > 100  # sampled, all the command's processes
        assert run["metrics"]["width"] == 32 and run["metrics"]["height"] == 24
    # cold compiled everything into its fresh cache; warm read it all back
    assert cold["metrics"]["compiles"]["compiled"] > 0 and cold["cache_files"] > 0
    assert warm["metrics"]["compiles"]["compiled"] == 0
    assert warm["metrics"]["compiles"]["cache_hits"] > 0


def test_arbitrary_command_nstjax_only(tmp_path, bench_env):
    out = tmp_path / "arb.json"
    cmd = [sys.executable, str(BENCH / "arbitrary_command.py"), "--no-peer"]
    cmd += ["--size", "64", "--rounds", "1", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=bench_env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "| nstjax cold |" in res.stdout and "| nstjax warm |" in res.stdout
    r = json.loads(out.read_text())
    assert set(r["summary"]) == {"nstjax cold", "nstjax warm"}
    cold, warm = r["runs"]
    assert (cold["mode"], warm["mode"]) == ("cold", "warm")
    for run in (cold, warm):
        assert run["rc"] == 0 and run["wall_s"] > 0 and run["peak_rss_mib"] > 100
    bad = [sys.executable, str(BENCH / "arbitrary_command.py"), "--content", "/nonexistent.jpg"]
    res = subprocess.run(bad, capture_output=True, text=True, env=bench_env, timeout=60)
    assert res.returncode == 2 and "no such image: /nonexistent.jpg" in res.stderr


def test_memory_extrapolation():
    m = _module("memory")
    one = {"peak": 1000, "pixels": 100, "scaling_bytes": 200}
    assert m.extrapolate([one], 100) == 1000
    assert m.extrapolate([one], 400) == 1000 + 1.5 * 200 * 3
    two = {"peak": 2000, "pixels": 200}
    assert m.extrapolate([one, two], 400) == 4000  # the line through both
    assert m.extrapolate([two, {"peak": 1500, "pixels": 400}], 800) == 1500  # never shrinks
    rows = [m.summarize(64, None, None, "skipped: too big")]
    assert "skipped: too big" in m.table(rows)
