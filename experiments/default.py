"""nstjax run --config experiments/default.py --workdir out/default

Tübingen in the style of The Starry Night, with a small ablation of the style
weight (beta, alpha = 1). ``:cpu`` for 128 px, ``:runlocal`` for a tiny test run.
"""

from nstjax import configs as common


def get_config(arg=None):
    config = common.base_config(arg)
    config.grid.cols = "style_weight"
    return config.lock()


def sweep(add):
    for beta in (1e2, 1e3, 1e4):
        add(style_weight=beta)
