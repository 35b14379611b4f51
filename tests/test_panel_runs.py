"""The distance panel in runs: metrics.json of stylize, summary.csv and panel.png of sweeps."""

from __future__ import annotations

import csv
import json

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
