"""nstjax: neural style transfer in JAX/Flax.

The public API::

    image, metrics = nstjax.stylize("content.jpg", ["style.jpg"], size=256, steps=100)

Importing nstjax has no side effects: it imports nothing heavy (not even JAX, which sets
environment variables when imported) and changes nothing in the process. The names below
are loaded on first use; ``nstjax.setup()`` applies the process defaults that the
command-line entry points use (see ``nstjax/process.py``).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LAYERS": "nstjax.vgg",
    "VGG19": "nstjax.vgg_net",
    "features": "nstjax.vgg_net",
    "Job": "nstjax.build",
    "build_job": "nstjax.build",
    "NstError": "nstjax.errors",
    "UsageError": "nstjax.errors",
    "optimize": "nstjax.gatys",
    "prepare": "nstjax.gatys",
    "stylize": "nstjax.gatys",
    "Objective": "nstjax.objective",
    "make_weights": "nstjax.objective",
    "setup": "nstjax.process",
    "Settings": "nstjax.settings",
    "Term": "nstjax.terms",
    "register_term": ("nstjax.terms", "register"),
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    """Loads an exported name, or a submodule (``nstjax.engine``), on first use."""
    if name in _EXPORTS:
        target = _EXPORTS[name]
        module, attr = target if isinstance(target, tuple) else (target, name)
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"nstjax.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"nstjax.{name}":
            raise
        raise AttributeError(f"module 'nstjax' has no attribute {name!r}") from None


def __dir__():
    return sorted([*globals(), *_EXPORTS])
