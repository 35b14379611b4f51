"""nstjax run --config experiments/arbitrary_grid.py:cpu --workdir out/arbitrary_grid

The fast arbitrary network (Ghiasi et al. 2017, Magenta "lite") on Tübingen: a grid of
style strength (columns: 0.25, 0.5, 0.75, 1) x blend between The Starry Night and The
Scream (rows: 1:0, 0.5:0.5, 0:1). All twelve share the content's size, so they run as
one group, batched (``config.batch_size`` per compiled call). ``:cpu`` and no argument
run at 384 px (the network's own size), ``:runlocal`` at 32 px for tests.
"""

from nstjax import configs as common

STRENGTHS = (0.25, 0.5, 0.75, 1.0)
BLENDS = ((1.0, 0.0), (0.5, 0.5), (0.0, 1.0))


def get_config(arg=None):
    config = common.base_config(arg)
    config.styles = [common.image("starry_night.jpg"), common.image("the_scream.jpg")]
    config.settings.method = "arbitrary"
    if arg != "runlocal":
        config.settings.size = 384
    config.batch_size = 4 if arg == "runlocal" else 12
    config.grid.rows = "style_blend"
    config.grid.cols = "style_strength"
    return config.lock()


def sweep(add):
    for blend in BLENDS:
        for strength in STRENGTHS:
            add(style_blend=blend, style_strength=strength)
