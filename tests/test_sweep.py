"""Sweeps: batched+sharded equals one-at-a-time, resume, SIGKILL safety, config checks."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nstjax import cli, gatys, sweep
from nstjax.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FIG2 = str(ROOT / "experiments" / "gatys2016_fig2.py")
FIG3 = str(ROOT / "experiments" / "gatys2016_fig3.py")
# TensorBoard scalars when tensorboardX is installed (it is in the test extra)
TB = ["--config.tensorboard=True"] if importlib.util.find_spec("tensorboardX") else []


def _run_subprocess(args, env_extra=None, **kw):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "nstjax.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        **kw,
    )


def _module(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(workdir: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text())
        for p in sorted((workdir / "variants").glob("*/metrics.json"))
    }


@pytest.fixture(scope="module")
def fig2_sharded(tmp_path_factory, weights_cache, images, shared_compile_env):
    """Fig. 2 (runlocal) on 4 CPU devices: 5 variants in batches of 4 (the second padded),
    sharded."""
    workdir = tmp_path_factory.mktemp("fig2")
    proc = _run_subprocess(
        ["--config", f"{FIG2}:runlocal", "--workdir", str(workdir), "--noprogress", *TB],
        {
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "NSTJAX_CACHE": str(weights_cache),
            **shared_compile_env,
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert "5 variants run" in proc.stderr and "1 groups" in proc.stderr
    return workdir


def test_fig2_outputs(fig2_sharded):
    m = _metrics(fig2_sharded)
    assert sorted(m) == ["000", "001", "002", "003", "004"]
    for name, metrics in m.items():
        assert metrics["status"] == "done" and metrics["steps"] == 4
        assert len(metrics["devices"]) == 4
        assert len(metrics["loss"]) == 4 and np.all(np.isfinite(metrics["loss"]))
        assert Image.open(fig2_sharded / "variants" / name / "image.png").size == (32, 24)
    for f in ("summary.csv", "summary.json", "contact_sheet.png", "loss_curves.png"):
        assert (fig2_sharded / f).is_file(), f
    rows = json.loads((fig2_sharded / "summary.json").read_text())
    assert [r["name"] for r in rows] == ["000", "001", "002", "003", "004"]
    assert not list(fig2_sharded.rglob(".*.tmp"))
    if TB:
        assert len(list((fig2_sharded / "tensorboard").glob("*/events.out.tfevents.*"))) == 5


def test_batched_sharded_equals_one_at_a_time(fig2_sharded, cache_env):
    """Tolerance: same math in a different fusion/batching; float32 rounding differs and
    L-BFGS amplifies it over 4 steps (measured < 0.3% on the losses, but for a trial
    point that overshot: 2.1%)."""
    parted = 0
    for name, m in _metrics(fig2_sharded).items():
        settings = Settings.from_mapping(m["settings"])
        img, single = gatys.stylize(m["content"], m["styles"], settings=settings)
        batched_loss, single_loss = np.asarray(m["loss"]), np.asarray(single["loss"])
        # The first loss is the same image's: the same up to the programs' rounding.
        np.testing.assert_allclose(batched_loss[0], single_loss[0], rtol=1e-5, err_msg=name)
        # Panels E-F (alpha/beta = 1e-4) are style-dominated: over 4 L-BFGS steps at 32 px
        # the float32 rounding differences between the vmapped and the single program grow
        # to ~1% of the loss and ~3/255 per pixel; B-D stay within 1% and 1/255.
        b_to_d = m["settings"]["content_weight"] >= 1e-3
        rtol, limit = (1e-2, 1.0) if b_to_d else (3e-2, 5.0)
        # A trial point that overshot (its loss above the last one) comes from a step
        # length measured by the first curvature pair, over the unit-norm first step: at
        # 32 px the loss moves there by a few float32 ulps, so the pair is mostly rounding,
        # each program's own, and so are the lengths (panel E with the one-pass Winograd
        # kernels: 11.5 against 5.6, then 0.186 against 0.174). Up to it the two
        # trajectories are compared; from it on, only finite and the image's size.
        overshot = np.flatnonzero(np.diff(single_loss) > 0)
        upto = overshot[0] + 1 if overshot.size else len(single_loss)
        np.testing.assert_allclose(batched_loss[:upto], single_loss[:upto], rtol=rtol,
                                   err_msg=name)  # fmt: skip
        assert np.all(np.isfinite(batched_loss)) and np.all(np.isfinite(single_loss)), name
        batched = np.asarray(Image.open(fig2_sharded / "variants" / name / "image.png"), np.float64)
        assert batched.shape == img.shape, name
        if overshot.size:
            parted += 1
        else:
            assert np.mean(np.abs(batched - img)) < limit, name
    assert parted <= 1  # one panel of five at most: else the tolerances above hide a change


def test_rerun_skips_finished_and_detects_changes(fig2_sharded, weights_cache, shared_compile_env):
    (fig2_sharded / "variants" / "001" / "metrics.json").unlink()
    before = (fig2_sharded / "variants" / "000" / "metrics.json").read_bytes()
    proc = _run_subprocess(  # batch_size decides no result: a resume may change it
        [
            "--config",
            f"{FIG2}:runlocal",
            "--workdir",
            str(fig2_sharded),
            "--noprogress",
            *TB,
            "--config.batch_size=2",
        ],
        {"NSTJAX_CACHE": str(weights_cache), **shared_compile_env},
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 variants run, 4 already done" in proc.stderr
    assert (fig2_sharded / "variants" / "000" / "metrics.json").read_bytes() == before
    assert (fig2_sharded / "variants" / "001" / "metrics.json").is_file()
    # a changed config is refused, in one line, with exit code 2
    proc = _run_subprocess(
        [
            "--config",
            f"{FIG2}:runlocal",
            "--workdir",
            str(fig2_sharded),
            "--config.settings.steps=5",
            *TB,
        ],
        {"NSTJAX_CACHE": str(weights_cache)},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"nstjax: error: workdir {str(fig2_sharded)!r} holds a different sweep "
        "(config.settings.steps changed from 4 to 5); pass --overwrite to replace it or use "
        "a new --workdir"
    ]


def test_sigkill_loses_nothing_finished(tmp_path, weights_cache, images, shared_compile_env):
    """Killed after two variants, resumed: the resume reads the killed runner's compiled
    programs back (the session's shared compilation cache)."""
    workdir = tmp_path / "killed"
    args = [
        "--config",
        f"{FIG3}:runlocal",
        "--workdir",
        str(workdir),
        "--noprogress",
        "--config.batch_size=1",
    ]
    env = dict(os.environ, NSTJAX_CACHE=str(weights_cache), **shared_compile_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nstjax.main", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list(workdir.glob("variants/*/metrics.json"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _metrics(workdir)
    assert 2 <= len(done) < 20
    for name in done:  # every finished variant is whole
        d = workdir / "variants" / name
        assert Image.open(d / "image.png").size == (32, 24)
        assert json.loads((d / "config.json").read_text())["name"] == name
    for f in workdir.rglob("*"):  # nothing half-written under a final name
        if f.is_file() and f.suffix == ".json" and not f.name.startswith("."):
            json.loads(f.read_text())
        if f.is_file() and f.suffix == ".png" and not f.name.startswith("."):
            Image.open(f).load()
    proc = _run_subprocess(args, {"NSTJAX_CACHE": str(weights_cache), **shared_compile_env},
                           timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"{20 - len(done)} variants run, {len(done)} already done" in proc.stderr
    assert len(_metrics(workdir)) == 20
    assert not list(workdir.rglob(".*.tmp"))


def test_fig3_groups_and_grid():
    fig3 = _module(FIG3)
    config = fig3.get_config("runlocal")
    variants = sweep.expand(config, fig3.sweep)
    assert len(variants) == 20
    groups = sweep.groups(variants)
    assert [len(g) for g in groups] == [4, 4, 4, 4, 4]
    assert [g[0].settings.style_layers for g in groups][-1] == (
        "relu1_1",
        "relu2_1",
        "relu3_1",
        "relu4_1",
        "relu5_1",
    )
    assert {v.settings.content_weight for v in groups[0]} == {1e-5, 1e-4, 1e-3, 1e-2}


def test_cli_run_bad_inputs(tmp_path, capsys):
    assert cli.main(["run", "--config", "nope.py", "--workdir", str(tmp_path)]) == 2
    assert cli.main(["run", "--config", f"{FIG2}:runlocal"]) == 2
    assert "--workdir is required" in capsys.readouterr().err
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from nstjax import configs as common\n"
        "def get_config(arg=None):\n    return common.base_config('runlocal').lock()\n"
        "def sweep(add):\n    add(style_wieght=3.0)\n"
    )
    code = cli.main(["run", "--config", str(bad), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "nstjax: error: sweep variant 0 sets unknown fields ['style_wieght']"
    ]
