"""nstjax run --config experiments/gatys2017_color.py:cpu --workdir out/gatys2017_color

Gatys, Ecker, Bethge, Hertzmann & Shechtman (CVPR 2017, arXiv 1611.07865), Fig. 3, colour
control: the garden photo (``fig3_content``) in the style of Starry Night over the Rhône
(``fig3_style1``): (a) ordinary transfer, (b) luminance-only transfer (the output's
luminance with the photo's I and Q), (c) colour histogram matching (the painting
recoloured to the photo's colour mean and covariance, Cholesky square root, then ordinary
transfer). Content relu4_2, style relu1_1..relu5_1, average pooling, L-BFGS, alpha/beta =
1e-3 on the raw Caffe VGG19. ``:cpu`` runs at 128 px, no argument at 512 px (for a GPU),
``:runlocal`` is a tiny test variant. The contact sheet's columns are the three modes.
"""

from nstjax import configs as common

MODES = ("none", "luminance", "histogram")


def get_config(arg=None):
    config = common.base_config(arg)
    config.content = common.image("gatys2017/fig3_content.jpg")
    config.styles = [common.image("gatys2017/fig3_style1.jpg")]
    config.settings.content_layers = ("relu4_2",)
    config.settings.style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    config.settings.content_weight = 1e-3
    config.settings.style_weight = 1.0
    config.grid.cols = "preserve_color"
    return config.lock()


def sweep(add):
    for mode in MODES:
        add(preserve_color=mode)
