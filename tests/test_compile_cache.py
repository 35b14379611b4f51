"""The persistent compilation cache: a second run of the same shapes compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from nstjax import cli


def _stylize(images, tmp_path, cache_dir, weights_cache, name):
    env = dict(os.environ, NSTJAX_COMPILE_CACHE=str(cache_dir), NSTJAX_CACHE=str(weights_cache))
    metrics = tmp_path / f"{name}.json"
    subprocess.run(
        [sys.executable, "-m", "nstjax", "stylize", "--content", str(images / "tubingen.jpg"),
         "--style", str(images / "starry_night.jpg"), "--output", str(tmp_path / f"{name}.png"),
         "--size", "32", "--steps", "3", "--quiet", "--metrics", str(metrics)],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    return json.loads(metrics.read_text())


def test_second_run_compiles_nothing(images, tmp_path, weights_cache, capsys, monkeypatch):
    cache_dir = tmp_path / "xla"
    first = _stylize(images, tmp_path, cache_dir, weights_cache, "a")
    second = _stylize(images, tmp_path, cache_dir, weights_cache, "b")
    assert first["compiles"]["compiled"] > 5 and first["compiles"]["cache_hits"] == 0
    assert second["compiles"]["compiled"] == 0
    assert second["compiles"]["cache_hits"] == first["compiles"]["compiled"]
    assert second["loss"] == first["loss"]  # the cached programs compute the same
    monkeypatch.setenv("NSTJAX_COMPILE_CACHE", str(cache_dir))
    assert cli.main(["cache", "info"]) == 0
    assert f"{cache_dir}, {first['compiles']['compiled']} files" in capsys.readouterr().out
    assert cli.main(["cache", "clear"]) == 0
    assert not cache_dir.exists()


def test_cache_can_be_turned_off(images, tmp_path, weights_cache, monkeypatch):
    m = _stylize(images, tmp_path, "0", weights_cache, "off")
    assert m["compiles"]["cache_hits"] == 0
    assert not (tmp_path / "0").exists()
