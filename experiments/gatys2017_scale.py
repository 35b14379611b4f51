"""nstjax run --config experiments/gatys2017_scale.py:cpu --workdir out/gatys2017_scale

Gatys et al. (CVPR 2017), Fig. 4, scale control: the night skyline (``fig4_content``)
with the fine scale (style layers relu1_1, relu2_1) of one style and the coarse scale
(relu3_1, relu4_1, relu5_1) of another, computed from a half-resolution copy of that
style image (``style_scale=0.5``: its structures become coarser relative to the output,
as the paper does with a low-resolution style image). Columns: each of ``fig4_style1..3``
alone, then fine of 1 + coarse of 2, fine of 2 + coarse of 3, fine of 3 + coarse of 1.
Content relu4_2, average pooling, L-BFGS, alpha/beta = 1e-3. ``:cpu`` runs at 128 px, no
argument at 512 px, ``:runlocal`` is a tiny test variant.
"""

from nstjax import configs as common

FINE = "layers=relu1_1+relu2_1"
COARSE = "layers=relu3_1+relu4_1+relu5_1,style_scale=0.5"


def get_config(arg=None):
    config = common.base_config(arg)
    config.content = common.image("gatys2017/fig4_content.jpg")
    config.styles = [common.image(f"gatys2017/fig4_style{i}.jpg") for i in (1, 2, 3)]
    config.settings.content_layers = ("relu4_2",)
    config.settings.style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    config.settings.content_weight = 1e-3
    config.settings.style_weight = 1.0
    config.grid.cols = "style_loss"
    return config.lock()


def sweep(add):
    for i in range(3):
        add(style_loss=(f"gram:style={i},name=style{i + 1}",))
    for fine, coarse in ((0, 1), (1, 2), (2, 0)):
        add(
            style_loss=(
                f"gram:style={fine},{FINE},name=fine",
                f"gram:style={coarse},{COARSE},name=coarse",
            )
        )
