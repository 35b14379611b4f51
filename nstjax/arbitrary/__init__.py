"""Fast arbitrary style transfer (Ghiasi et al. 2017) with weights imported from ONNX.

    params = nstjax.arbitrary.load_params()          # fetched and converted once, cached
    out_Bx384x384x3 = nstjax.arbitrary.stylize_jit(params, contents_Bx384x384x3, styles)

Images are float32 NHWC in [0, 1]; one jitted call stylizes a whole batch.
"""

import importlib

_EXPORTS = {
    "fetch_params": ("nstjax.arbitrary.weights", "fetch"),
    "load_params": ("nstjax.arbitrary.weights", "load"),
    "prepare_style": ("nstjax.arbitrary.api", "prepare_style"),
    "style_vector": ("nstjax.arbitrary.api", "style_vector"),
    "stylize": ("nstjax.arbitrary.api", "stylize"),
    "stylize_jit": ("nstjax.arbitrary.run", "stylize_jit"),
    "stylize_pixels": ("nstjax.arbitrary.run", "stylize_pixels"),
    "transfer": ("nstjax.arbitrary.api", "transfer"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Loads an exported name on first use: the package imports no JAX by itself (its
    :mod:`~nstjax.arbitrary.bare_command` runs without it)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nstjax.arbitrary' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
