"""The distance panel's heat map (``panel.png`` of a sweep): rows are variants (the loss
that was optimized), columns the distances of :mod:`nstjax.panel`."""

from __future__ import annotations

import math
from pathlib import Path

from nstjax import atomic
from nstjax.errors import UsageError
from nstjax.report import GREY, format_value


def panel_heatmap(path: Path, rows: dict[str, dict[str, float]], title: str = "") -> Path:
    """Draws a distance panel as a heat map: one row per variant, one column per distance.

    ``rows`` maps a variant's name to its normalized distances (``nstjax.panel``:
    ``{"style/gram": 0.12, ..., "content/mse": 0.4}``; 1.0 is the photo's own style
    distance, or the painting's content distance). Columns are the distances in order of
    first appearance; a missing or non-finite value is a grey cell. Colour is log2 of the
    value on a diverging scale centred at 1.0 (blue: closer than the reference, red:
    farther; clipped at 1/64 and 64); each cell is annotated with its value. Written
    atomically; returns ``path``.
    """
    if not rows:
        raise UsageError("a panel heat map needs at least one row")
    try:
        import matplotlib  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise UsageError("panel heat maps need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    names = [str(n) for n in rows]
    columns = list(dict.fromkeys(k for r in rows.values() for k in r))
    values = np.full((len(names), len(columns)), np.nan)
    for i, r in enumerate(rows.values()):
        for j, key in enumerate(columns):
            v = r.get(key)
            if isinstance(v, int | float) and math.isfinite(v):
                values[i, j] = v
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log2(np.where(values > 0, values, np.nan))
    logs = np.where(values == 0, -6.0, logs)  # a zero distance: the bluest
    limit = 6.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad=tuple(c / 255 for c in GREY))
    fig_w = 1.6 + 0.85 * len(columns) + 0.07 * max(len(n) for n in names)
    fig, ax = plt.subplots(figsize=(fig_w, 0.9 + 0.42 * len(names)))
    try:
        shown = np.ma.masked_invalid(np.clip(logs, -limit, limit))
        im = ax.imshow(shown, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(columns)), [c.split("/", 1)[-1] for c in columns], rotation=45,
                      ha="right", fontsize=9)  # fmt: skip
        ax.set_yticks(range(len(names)), names, fontsize=9)
        roles = [c.split("/", 1)[0] if "/" in c else "" for c in columns]
        for j in range(1, len(columns)):
            if roles[j] != roles[j - 1]:  # a line between the style and content distances
                ax.axvline(j - 0.5, color="black", lw=1.5)
        for i in range(len(names)):
            for j in range(len(columns)):
                v = values[i, j]
                text = "-" if not math.isfinite(v) else format_value(float(v))
                dark = math.isfinite(logs[i, j]) and abs(logs[i, j]) > 0.6 * limit
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")  # fmt: skip
        bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        ticks = [-6, -4, -2, 0, 2, 4, 6]
        bar.set_ticks(ticks, labels=[f"{2.0**t:g}" for t in ticks])
        bar.set_label("normalized distance (log scale)", fontsize=8)
        ax.set_title(title or "distance panel (1 = the photo's style / the painting's content)",
                     fontsize=10)  # fmt: skip
        fig.tight_layout()
        save = lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
        return atomic.write_with(path, save)
    finally:
        plt.close(fig)
