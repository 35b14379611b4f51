"""Pieces shared by the experiment config files (image paths, size presets).

Lives in the library so that config files import it from anywhere
(``from nstjax import configs``), whatever the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections

from nstjax.settings import fields as settings_fields

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


# Python types of the schema's value types, for fields whose default is None.
_NONE_TYPES = {"opt_float": float, "opt_str": str, "floats": tuple, "names": tuple, "ints": tuple}


def settings_config() -> ml_collections.ConfigDict:
    """A ConfigDict with every :class:`Settings` field at its default, generated from
    the schema (fields that default to None get a typed placeholder)."""
    config = ml_collections.ConfigDict()
    for f in settings_fields():
        if f.default is None:
            value = ml_collections.FieldReference(None, field_type=_NONE_TYPES[f.metadata["type"]])
        else:
            value = f.default
        setattr(config, f.name, value)
    return config


def base_config(arg: str | None) -> ml_collections.ConfigDict:
    """A config with every Settings field, sized by the ``arg`` preset."""
    if arg not in PRESETS:
        raise ValueError(f"unknown config argument {arg!r}; use one of {[k for k in PRESETS if k]}")
    size, steps, batch_size, chunk = PRESETS[arg]
    config = ml_collections.ConfigDict()
    config.content = image("tubingen.jpg")
    config.styles = [image("starry_night.jpg")]
    config.settings = settings_config()
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
