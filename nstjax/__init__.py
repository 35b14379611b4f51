"""nstjax: neural style transfer in JAX/Flax.

The public API, re-exported explicitly::

    image, metrics = nstjax.stylize("content.jpg", ["style.jpg"], size=256, steps=100)
"""

from nstjax.errors import NstError, UsageError
from nstjax.gatys import optimize, prepare, stylize
from nstjax.objective import Spec, make_weights
from nstjax.settings import Settings
from nstjax.vgg import LAYERS, VGG19, features

__all__ = [
    "LAYERS",
    "VGG19",
    "NstError",
    "Settings",
    "Spec",
    "UsageError",
    "features",
    "make_weights",
    "optimize",
    "prepare",
    "stylize",
]
__version__ = "0.1.0"
