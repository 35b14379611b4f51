"""Memory: the estimate from shapes, the refusal before compiling, remat equality."""

from __future__ import annotations

import numpy as np
import pytest

import nstjax
from nstjax import cli, memory
from nstjax.errors import UsageError


def _stylize(images, tmp_path, *extra) -> list[str]:
    """``nstjax stylize`` of Tübingen in the style of The Starry Night, into tmp_path."""
    return ["stylize", "--content", str(images / "tubingen.jpg"), "--style",
            str(images / "starry_night.jpg"), "--output", str(tmp_path / "o.png"),
            *extra]  # fmt: skip


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
    argv = _stylize(images, tmp_path, "--size", "1024", "--quiet")
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


def test_a_tiled_run_counts_its_targets_forward_pass_on_the_whole_images():
    crop = (672, 672)
    untiled = memory.estimate(2048, 2048, "relu5_1", reference_px=4 * 2**20)
    assert untiled["targets"] == 0  # in the activations' calibration
    larger = memory.estimate(2048, 2048, "relu5_1", reference_px=5 * 2**20)  # --style-scale
    assert larger["targets"] == 512 * 2**20
    tiled = memory.estimate(2048, 2048, "relu5_1", tile_hw=crop)
    with_refs = memory.estimate(2048, 2048, "relu5_1", tile_hw=crop, reference_px=4 * 2**20)
    assert with_refs["targets"] == 512 * 4 * 2**20 == 2 * 2**30  # two 64-channel maps a pixel
    assert with_refs["total"] - tiled["total"] == 2 * 2**30


def test_a_tiled_run_too_large_for_memory_is_refused_with_a_hint_that_fits(
    images, tmp_path, capsys, monkeypatch
):
    """A 6000x4500 tiled run passed the estimate, then aborted the process inside XLA
    (std::bad_alloc) computing its targets on the whole images: now one line, and the
    shorter history's figure counts the tiles too."""
    monkeypatch.setenv("NSTJAX_MEMORY_LIMIT", "9G")
    argv = _stylize(images, tmp_path, "--size", "2048", "--tile", "512", "--quiet")
    assert cli.main(argv) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    short = memory.estimate(1536, 2048, "relu5_1", 3, 10, True, True, tile_hw=(672, 672),
                            reference_px=1536 * 2048)  # fmt: skip
    assert "a 2048x1536 run needs an estimated" in err and "9.0 GiB is available" in err
    assert f"--memory-size 10 ({memory.gib(short['total'])};" in err
    assert short["total"] < 9 * 2**30  # the hint fits
    argv += ["--memory-size", "10", "--steps", "0", "--panel", "off"]
    monkeypatch.setenv("NSTJAX_MEMORY_LIMIT", "5G")  # its targets alone are 1.5 GiB
    assert cli.main(argv) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert f"needs an estimated {memory.gib(short['total'])}" in err


def test_the_fast_network_is_refused_where_xla_cpu_would_abort(images, tmp_path, capsys,
                                                               monkeypatch):  # fmt: skip
    import jax  # noqa: PLC0415

    if jax.default_backend() != "cpu":
        pytest.skip("the pixel bound and the host-memory estimate are XLA:CPU's")
    argv = ["stylize", "--method", "arbitrary", "--content", str(images / "tubingen.jpg"),
            "--style", str(images / "starry_night.jpg"), "--output", str(tmp_path / "o.png"),
            "--quiet", "--size"]  # fmt: skip
    assert cli.main([*argv, "8192"]) == 2  # 8192x6144 aborted inside XLA:CPU
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err == ("nstjax: error: the fast network runs on CPU at up to 37,000,000 pixels, "
                   "and a 8192x6144 image has 50,331,648; use a smaller --size")  # fmt: skip
    monkeypatch.setenv("NSTJAX_MEMORY_LIMIT", "1G")
    assert cli.main([*argv, "4096"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "the fast network on a 4096x3072 image needs an estimated 2.1 GiB" in err
    assert not (tmp_path / "o.png").exists()
    monkeypatch.setenv("NSTJAX_MEMORY_LIMIT", "3G")
    e = memory.fit_arbitrary((3072, 4096), batch=1)  # the figures it was calibrated on
    peak = 1_622 * 2**20  # the larger of its warm and cold peaks (memory.py)
    assert peak < e["total"] < 1.4 * peak
    with pytest.raises(UsageError, match="on 4 images of 4096x3072 needs .* --batch-size"):
        memory.fit_arbitrary((3072, 4096), batch=4)


def test_a_style_image_much_larger_than_the_content_is_counted(images, tmp_path, capsys,
                                                               monkeypatch):  # fmt: skip
    """--style-scale 20 at 512 px made a 66-megapixel style image whose targets (31 GiB)
    aborted the process inside XLA; now the estimate counts them and names the scale."""
    monkeypatch.setenv("NSTJAX_MEMORY_LIMIT", "2G")
    argv = _stylize(images, tmp_path, "--size", "64", "--style-scale", "40", "--quiet")
    assert cli.main(argv) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "a 64x48 run needs an estimated" in err
    assert "a smaller --style-scale (a style image of 4,096,000 pixels: its targets" in err
    assert cli.main(argv[:-2] + ["2", "--quiet", "--steps", "0", "--panel", "off"]) == 0
