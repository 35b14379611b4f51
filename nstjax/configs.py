"""Pieces shared by the experiment config files (image paths, size presets).

Lives in the library so that config files import it from anywhere
(``from nstjax import configs``), whatever the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections

from nstjax.settings import Settings

# ../shared/images beside the repository (NSTJAX_IMAGES overrides it).
IMAGES = Path(
    os.environ.get("NSTJAX_IMAGES", Path(__file__).resolve().parents[2] / "shared" / "images")
)

# arg -> (long side, steps, batch size, chunk size)
PRESETS = {
    None: (512, 500, 20, 20),  # the paper's size: for a GPU
    "gpu": (512, 500, 20, 20),
    "cpu": (128, 200, 20, 20),  # a laptop-sized reproduction
    "runlocal": (32, 4, 4, 2),  # tiny: for tests and CI
}


def image(name: str) -> str:
    return str(IMAGES / name)


def base_config(arg: str | None) -> ml_collections.ConfigDict:
    """A config with every Settings field, sized by the ``arg`` preset."""
    if arg not in PRESETS:
        raise ValueError(f"unknown config argument {arg!r}; use one of {[k for k in PRESETS if k]}")
    size, steps, batch_size, chunk = PRESETS[arg]
    config = ml_collections.ConfigDict()
    config.content = image("tubingen.jpg")
    config.styles = [image("starry_night.jpg")]
    config.settings = ml_collections.ConfigDict(Settings().as_dict())
    config.settings.lr = ml_collections.FieldReference(None, field_type=float)
    config.settings.content_layer_weights = ml_collections.FieldReference(None, field_type=tuple)
    config.settings.style_layer_weights = ml_collections.FieldReference(None, field_type=tuple)
    config.settings.style_blend = ml_collections.FieldReference(None, field_type=tuple)
    config.settings.weights_format = ml_collections.FieldReference(None, field_type=str)
    config.settings.size = size
    config.settings.steps = steps
    config.settings.chunk_size = chunk
    config.batch_size = batch_size  # variants per compiled batch (bounds memory)
    config.grid = ml_collections.ConfigDict({"rows": None, "cols": None})
    config.grid.rows = ml_collections.FieldReference(None, field_type=str)
    config.grid.cols = ml_collections.FieldReference(None, field_type=str)
    config.tensorboard = False
    config.distributed = False  # jax.distributed.initialize() for multi-host runs
    return config
