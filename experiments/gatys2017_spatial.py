"""nstjax run --config experiments/gatys2017_spatial.py:cpu --workdir out/gatys2017_spatial

Gatys et al. (CVPR 2017), Fig. 2, spatial control, on the Tübingen photo with its sky mask
(the paper's own content photo is not published): the sky takes its style from the sky of
``fig2_style1`` (a painting of a house under a sky, restricted to its sky mask) and the
ground from the ground of ``fig2_style2`` (Van Gogh's Wheat Field with Cypresses,
restricted to its not-sky mask), with guided Gram matrices (eroded "inside" guidance).
Columns: (a) no spatial control, both styles blended everywhere; (b) spatial control.
Content relu4_2, style relu1_1..relu5_1, average pooling, L-BFGS, alpha/beta = 1e-3.
``:cpu`` runs at 128 px, no argument at 512 px, ``:runlocal`` is a tiny test variant.
"""

from nstjax import configs as common

G = "gatys2017/"


def get_config(arg=None):
    config = common.base_config(arg)
    config.content = common.image("tubingen.jpg")
    config.styles = [common.image(G + "fig2_style1.jpg"), common.image(G + "fig2_style2.jpg")]
    config.settings.content_layers = ("relu4_2",)
    config.settings.style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    config.settings.content_weight = 1e-3
    config.settings.style_weight = 1.0
    config.grid.cols = "masks"
    return config.lock()


STYLE_MASKS = (G + "fig2_style1_sky.jpg", G + "fig2_style2_nosky.jpg")


def sweep(add):
    sky = common.image("tubingen_sky.png")
    style_masks = tuple(common.image(m) for m in STYLE_MASKS)
    add(masks=(), style_masks=style_masks)  # (a): the style masks act only with regions
    add(masks=(sky, "!" + sky), style_masks=style_masks)
