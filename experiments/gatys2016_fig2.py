"""nstjax run --config experiments/gatys2016_fig2.py:cpu --workdir out/fig2

Gatys, Ecker & Bethge (CVPR 2016), Fig. 2 B-D: the Tübingen photograph in the
styles of The Shipwreck of the Minotaur (Turner), The Starry Night (van Gogh)
and The Scream (Munch). Paper settings: content relu4_2, style relu1_1..relu5_1
with equal weights, alpha/beta = 1e-3, average pooling, L-BFGS, 512 px (no ``:arg``;
meant for a GPU). ``:cpu`` runs at 128 px, ``:runlocal`` is a tiny test variant.

Caffe's ReLUs are in place, so the paper's "conv4_2" response is our relu4_2.
The three styles share shapes and layers, so they run as one batched program.
"""

from nstjax import configs as common

STYLES = ("shipwreck.jpg", "starry_night.jpg", "the_scream.jpg")


def get_config(arg=None):
    config = common.base_config(arg)
    config.settings.content_layers = ("relu4_2",)
    config.settings.style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    config.settings.pooling = "avg"
    config.settings.optimizer = "lbfgs"
    config.settings.content_weight = 1e-3  # alpha / beta with beta = 1
    config.settings.style_weight = 1.0
    config.grid.cols = "styles"
    return config.lock()


def sweep(add):
    for name in STYLES:
        add(styles=(common.image(name),))
