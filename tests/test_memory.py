"""Memory: the estimate from shapes, the refusal before compiling, remat equality."""

from __future__ import annotations

import numpy as np

import nstjax
from nstjax import cli, memory


def test_estimate_scales_with_pixels_and_history():
    a = memory.estimate(512, 512, "relu5_1")
    b = memory.estimate(1024, 1024, "relu5_1")
    assert (
        3.9
        < (b["total"] - b["params"] - b["baseline"]) / (a["total"] - a["params"] - a["baseline"])
        < 4.1
    )
    # 100 L-BFGS pairs of a 2048x2048 RGB float32 image: 9.4 GiB
    h = memory.estimate(2048, 2048, "relu5_1")["lbfgs_history"]
    assert abs(h / 2**30 - 9.375) < 0.01
    assert memory.estimate(512, 512, "relu1_1")["total"] < a["total"]
    # calibrated on the measured peak RSS: ~12.7 KB per pixel at 1024x768
    c = memory.estimate(768, 1024, "relu5_1")
    assert 12_000 < (c["total"] - c["baseline"]) / (768 * 1024) < 13_500


def test_a_run_that_cannot_fit_is_refused_before_compiling(images, tmp_path, capsys,
                                                           monkeypatch):  # fmt: skip
    monkeypatch.setenv("NSTJAX_MEMORY_LIMIT", "2G")
    argv = ["stylize", "--content", str(images / "tubingen.jpg"), "--style",
            str(images / "starry_night.jpg"), "--output", str(tmp_path / "o.png"),
            "--size", "1024", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs an estimated" in err[0] and "2.0 GiB is available" in err[0]
    assert "--memory-size 10" in err[0] and not (tmp_path / "o.png").exists()


def test_remat_gives_the_same_losses(images, real_weights):
    kw = dict(weights=real_weights, size=32, steps=3, conv_impl="xla")
    pair = (images / "tubingen.jpg", images / "starry_night.jpg")
    _, a = nstjax.stylize(*pair, **kw)
    _, b = nstjax.stylize(*pair, remat="on", **kw)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert b["memory_estimate"]["total"] > 0
