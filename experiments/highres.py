"""nstjax run --config experiments/highres.py --workdir out/highres

A high-resolution coarse-to-fine run: Tübingen in the style of The Starry Night on a
pyramid 512 -> 1024 -> 2048 px (long side; each level from the previous result upsampled,
fresh L-BFGS state), L-BFGS with a 10-pair history (100 pairs of a 2048x1536 image would
take 7 GiB alone), content relu4_2, style relu1_1..relu5_1. Levels larger than 512 px run
in tiles of 512 (``tile``: exact tiled gradients, nstjax/tiles.py; the whole 2048x1536 image
would need ~35 GB). ``:cpu`` stops at 1024 px (256 -> 512 -> 1024, whole images: 1024x768
fits in ~9 GB), ``:runlocal`` is a tiny test variant (16 -> 32).
"""

from nstjax import configs as common

SCHEDULES = {  # scales, steps per scale, tile (0: whole images)
    None: ((512, 1024, 2048), (200, 100, 50), 512),
    "gpu": ((512, 1024, 2048), (200, 100, 50), 512),
    "cpu": ((256, 512, 1024), (100, 50, 25), 0),
    "runlocal": ((16, 32), (2, 2), 0),
}


def get_config(arg=None):
    config = common.base_config(arg)
    scales, steps, tile = SCHEDULES[arg]
    config.settings.scales = scales
    config.settings.scale_steps = steps
    config.settings.size = scales[-1]
    config.settings.memory_size = 10
    config.settings.tile = tile
    config.settings.content_layers = ("relu4_2",)
    config.settings.style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    config.batch_size = 1
    return config.lock()
