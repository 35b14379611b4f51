"""The distance panel in runs: metrics.json of stylize, summary.csv and panel.png of sweeps."""

from __future__ import annotations

import csv
import json
import re

import nstjax
from nstjax import configs, runner


def test_stylize_and_sweep_score_the_panel(images, real_weights, tmp_path, cache_env):
    kw = dict(weights=real_weights, size=32, steps=4, conv_impl="xla", panel="on")
    pair = (images / "tubingen.jpg", images / "starry_night.jpg")
    _, m = nstjax.stylize(*pair, metrics=tmp_path / "m.json", **kw)
    saved = json.loads((tmp_path / "m.json").read_text())["panel"]
    assert saved == m["panel"]
    norm = m["panel"]["normalized"]
    assert {"style/gram", "content/mse"} <= set(norm)
    assert all(k.startswith(("style/", "content/")) for k in norm)
    assert norm["style/gram"] < 1.0  # the stylized image is closer to the style than the photo
    config = configs.base_config("runlocal").unlock()
    config.settings.update(dict(size=32, steps=2, conv_impl="xla", panel="on"))
    runner.run(config.lock(), tmp_path / "w", lambda add: [add(style_weight=w) for w in (1e2, 1e4)],
               progress=False)  # fmt: skip
    with open(tmp_path / "w" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "panel/style/gram" in rows[0]
    assert (tmp_path / "w" / "panel.png").is_file()


def test_panel_of_chosen_distances(images, real_weights, tmp_path, cache_env):
    kw = dict(size=32, steps=2, conv_impl="xla")
    pair = (images / "tubingen.jpg", images / "starry_night.jpg")
    _, m = nstjax.stylize(*pair, panel="w2+mse+gram:norm=chw,name=style/gram_chw",
                          weights=real_weights, **kw)  # fmt: skip
    assert sorted(m["panel"]["raw"]) == ["content/mse", "style/gram_chw", "style/w2"]
    assert sorted(m["panel"]["normalized"]) == sorted(m["panel"]["raw"])
    _, off = nstjax.stylize(*pair, panel="off", weights=real_weights, **kw)
    assert off["panel"] is None
    # variants of one sweep with different panels: each gets its own (not a shared one)
    config = configs.base_config("runlocal").unlock()
    config.settings.update(kw)
    runner.run(config.lock(), tmp_path / "w",
               lambda add: [add(panel="gram+selfsim"), add(panel="meanstd")],
               progress=False)  # fmt: skip
    with open(tmp_path / "w" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    filled = [sorted(k for k, v in r.items() if k.startswith("panel/") and v) for r in rows]
    assert sorted(filled) == [["panel/content/selfsim", "panel/style/gram"],
                              ["panel/style/meanstd"]]  # fmt: skip


def test_panel_setting_rejects_what_is_not_a_distance():
    import pytest

    from nstjax.errors import UsageError
    from nstjax.settings import Settings

    assert Settings(panel="on").panel_distances() == (None, ("mse", "selfsim"))
    assert Settings(panel="off").panel_distances() is None
    assert Settings(panel=" mse + gram ").panel_distances() == (("gram",), ("mse",))
    for bad, message in [
        ("gram+", "panel: '' is not a style or content distance"),
        ("tv", "panel: 'tv' is not a style or content distance"),
        ("nope", "panel: unknown loss term 'nope'"),
        ("gram:layers=relu1_1", "layers and weights are the panel's"),
        ("gram:weight=2", "layers and weights are the panel's"),
        ("ON", "panel: unknown loss term 'ON'"),
    ]:
        with pytest.raises(UsageError, match=re.escape(message)):
            Settings(panel=bad)
