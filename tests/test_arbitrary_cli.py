"""The fast network from the command line and as the Gatys init (real weights, cached)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from nstjax import cli, gatys


@pytest.fixture
def base(images, tmp_path, cache_env):
    return [
        "stylize",
        "--method",
        "arbitrary",
        "--content",
        str(images / "tubingen.jpg"),
        "--style",
        str(images / "starry_night.jpg"),
        "--output",
        str(tmp_path / "a.png"),
        "--size",
        "64",
    ]


def test_arbitrary_cli_writes_image(base, tmp_path, capsys):
    assert cli.main(base + ["--metrics", str(tmp_path / "m.json")]) == 0
    out = np.asarray(Image.open(tmp_path / "a.png"))
    assert out.shape == (48, 64, 3)
    assert out.std() > 10  # an image, not a flat fill
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["method"] == "arbitrary" and m["weights"]["source"] == "arbitrary-lite"


def test_strength_and_blend(base, tmp_path, images):
    assert cli.main(base + ["--style-strength", "0"]) == 0
    zero = np.asarray(Image.open(tmp_path / "a.png"), np.float64)
    assert cli.main(base) == 0
    full = np.asarray(Image.open(tmp_path / "a.png"), np.float64)
    assert cli.main(base + ["--style", str(images / "the_scream.jpg"), "--style-blend", "1,0"]) == 0
    blended = np.asarray(Image.open(tmp_path / "a.png"), np.float64)
    assert np.mean(np.abs(full - zero)) > 5  # strength changes the result
    assert np.mean(np.abs(full - blended)) < 1.0  # weight 0 on the second style


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--style-strength", "1.5"], "--style-strength must be in [0, 1]"),
        (["--style", "/nope.jpg"], "image not found"),
        (["--style-blend", "1,2,3"], "--style-blend has 3 weights for 1 style images"),
    ],
)
def test_arbitrary_bad_input(base, capsys, extra, pattern):
    argv = base + extra
    if extra[0] == "--style":
        argv = base[:5] + extra + base[7:]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pattern in err[0]


def test_init_arbitrary_starts_from_the_fast_networks_output(images, real_weights, cache_env):
    from nstjax import image
    from nstjax.arbitrary import run

    content = image.load(images / "tubingen.jpg", long_side=64)
    style = image.load(images / "starry_night.jpg", long_side=64)
    fast, _ = run.stylize_pixels(content, [style])
    out, m = gatys.stylize(
        images / "tubingen.jpg",
        images / "starry_night.jpg",
        weights=real_weights,
        size=64,
        steps=0,
        init="arbitrary",
    )
    assert m["settings"]["init"] == "arbitrary" and m["steps"] == 0
    np.testing.assert_array_equal(out, image.to_uint8(fast))
    plain, _ = gatys.stylize(
        images / "tubingen.jpg", images / "starry_night.jpg", weights=real_weights, size=64, steps=0
    )
    assert np.mean(np.abs(out.astype(float) - plain)) > 10  # not the content image


def test_a_warm_command_runs_both_programs_without_jax(base, tmp_path, monkeypatch):
    """The fast network's programs go through nstjax's store of whole executables and
    its bare records (nstjax.bare): a second command imports neither JAX nor Flax and
    runs both stored programs with jaxlib alone; with NSTJAX_BARE=0 it reads both
    whole executables through JAX, tracing nothing. All three draw the same image."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    monkeypatch.setenv("NSTJAX_COMPILE_CACHE", str(tmp_path / "xla"))
    runs = []
    for name, bare in (("cold", "1"), ("warm", "1"), ("jax", "0"), ("rewritten", "1")):
        if name == "rewritten":  # records written from the stored executables, not fresh
            shutil.rmtree(tmp_path / "xla" / "nstjax-bare")
            cmd = [*base[:-4], "--output", str(tmp_path / "refill.png"), "--size", "64", "--quiet"]
            subprocess.run([sys.executable, "-m", "nstjax", *cmd], check=True, capture_output=True)
        cmd = [*base[:-4], "--output", str(tmp_path / f"{name}.png"), "--size", "64"]
        cmd += ["--metrics", str(tmp_path / f"{name}.json"), "--quiet"]
        res = subprocess.run([sys.executable, "-X", "importtime", "-m", "nstjax", *cmd],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, "NSTJAX_BARE": bare})  # fmt: skip
        runs.append(json.loads((tmp_path / f"{name}.json").read_text()))
        imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines()}
        assert ("flax" in imported) == (name == "cold"), name
        assert ("jax" in imported) == (name in ("cold", "jax")), name
        assert "pjrt_client" not in res.stderr  # jaxlib's C++ log stays quiet, as with JAX
    cold, warm, jax_, rewritten = (r["compiles"] for r in runs)
    assert rewritten == warm
    assert cold["compiled"] >= 2 and cold["whole_executables"] == 0
    assert warm["compiled"] == 0 and warm["bare"] == 2  # the predictor and the transformer
    assert jax_["compiled"] == 0 and jax_["whole_executables"] == 2 and "bare" not in jax_
    assert runs[1]["backend"] == runs[2]["backend"] == "cpu"
    assert {k for k in runs[1] if k != "compiles"} == {k for k in runs[2] if k != "compiles"}
    names = ("cold", "warm", "jax", "rewritten", "refill")
    a, *others = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in names)
    for b in others:
        np.testing.assert_array_equal(a, b)
    # the bare path's input errors are the JAX path's: one line, exit code 2, no image
    cmd = [*base[:-8], "--content", base[4], "--style", str(tmp_path / "missing.jpg"),
           "--output", str(tmp_path / "bad.png"), "--size", "64", "--quiet"]  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "nstjax", *cmd], capture_output=True, text=True)
    assert res.returncode == 2 and "not found" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad.png").exists()
    # and its refusal of an image too large for memory, before JAX is imported
    cmd = [*base[:-4], "--output", str(tmp_path / "big.png"), "--size", "64", "--quiet"]
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "nstjax", *cmd],
                         capture_output=True, text=True,
                         env={**os.environ, "NSTJAX_MEMORY_LIMIT": "100M"})  # fmt: skip
    lines = [line for line in res.stderr.splitlines() if not line.startswith("import time:")]
    assert res.returncode == 2 and lines == [
        "nstjax: error: the fast network on a 64x48 image needs an estimated 0.3 GiB of memory "
        "and 0.1 GiB is available; use a smaller --size"
    ], res.stderr[-500:]
    assert not any(line.rsplit("|", 1)[-1].strip() == "jax" for line in res.stderr.splitlines())
    assert not (tmp_path / "big.png").exists()
