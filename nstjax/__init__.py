"""nstjax: neural style transfer in JAX/Flax.

The public API, re-exported explicitly::

    image, metrics = nstjax.stylize("content.jpg", ["style.jpg"], size=256, steps=100)
"""

from nstjax import malloc, xla_flags

xla_flags.apply()  # before JAX starts its backend (see nstjax/xla_flags.py)
malloc.apply()  # before XLA's threads allocate (see nstjax/malloc.py)

from nstjax.errors import NstError, UsageError  # noqa: E402
from nstjax.gatys import optimize, prepare, stylize  # noqa: E402
from nstjax.objective import Spec, make_weights  # noqa: E402
from nstjax.settings import Settings  # noqa: E402
from nstjax.vgg import LAYERS, VGG19, features  # noqa: E402

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
