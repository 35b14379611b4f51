"""nstjax run --config experiments/highres.py --workdir out/highres

A high-resolution coarse-to-fine run: Tübingen in the style of The Starry Night on a
pyramid 512 -> 1024 -> 2048 px (long side; each level from the previous result upsampled,
fresh L-BFGS state), L-BFGS with a 10-pair history (100 pairs of a 2048x1536 image would
take 7 GiB alone), content relu4_2, style relu1_1..relu5_1. ``:cpu`` stops at 1024 px
(256 -> 512 -> 1024), ``:runlocal`` is a tiny test variant (16 -> 32).
"""

from nstjax import configs as common

SCHEDULES = {
    None: ((512, 1024, 2048), (200, 100, 50)),
    "gpu": ((512, 1024, 2048), (200, 100, 50)),
    "cpu": ((256, 512, 1024), (100, 50, 25)),
    "runlocal": ((16, 32), (2, 2)),
}


def get_config(arg=None):
    config = common.base_config(arg)
    scales, steps = SCHEDULES[arg]
    config.settings.scales = scales
    config.settings.scale_steps = steps
    config.settings.size = scales[-1]
    config.settings.memory_size = 10
    config.settings.content_layers = ("relu4_2",)
    config.settings.style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    config.batch_size = 1
    return config.lock()
