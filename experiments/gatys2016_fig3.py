"""nstjax run --config experiments/gatys2016_fig3.py:cpu --workdir out/fig3

Gatys, Ecker & Bethge (CVPR 2016), Fig. 3: Tübingen in the style of
Kandinsky's Composition VII in the paper; here The Starry Night (the images we
have). Rows: style layers {conv1_1}, {conv1_1, conv2_1}, ..., {conv1_1, ..., conv5_1}
(our relu*_1: Caffe's in-place ReLU); columns: alpha/beta in {1e-5, 1e-4, 1e-3,
1e-2} (the ``content_weight`` column, with beta = 1). Content relu4_2, average
pooling, L-BFGS, 512 px (no ``:arg``; for a GPU). ``:cpu`` runs at 128 px,
``:runlocal`` is a tiny test variant.

Each row is one group (its layer set decides the program); its four ratios run
as one batched program.
"""

from nstjax import configs as common

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
RATIOS = (1e-5, 1e-4, 1e-3, 1e-2)


def get_config(arg=None):
    config = common.base_config(arg)
    config.settings.content_layers = ("relu4_2",)
    config.settings.pooling = "avg"
    config.settings.optimizer = "lbfgs"
    config.settings.style_weight = 1.0
    config.grid.rows = "style_layers"
    config.grid.cols = "content_weight"
    return config.lock()


def sweep(add):
    for n in range(1, len(LAYERS) + 1):
        for ratio in RATIOS:
            add(style_layers=LAYERS[:n], content_weight=ratio)
