"""nstjax: neural style transfer in JAX/Flax.

The public API, re-exported explicitly::

    image, metrics = nstjax.stylize("content.jpg", ["style.jpg"], size=256, steps=100)

Importing nstjax changes nothing in the process; ``nstjax.setup()`` applies the XLA
and malloc defaults that the command-line entry points use (see ``nstjax/process.py``).
"""

from nstjax.build import Job, build_job
from nstjax.errors import NstError, UsageError
from nstjax.gatys import optimize, prepare, stylize
from nstjax.objective import Objective, make_weights
from nstjax.process import setup
from nstjax.settings import Settings
from nstjax.terms import Term
from nstjax.terms import register as register_term
from nstjax.vgg import LAYERS, VGG19, features

__all__ = [
    "LAYERS",
    "VGG19",
    "Job",
    "NstError",
    "Objective",
    "Settings",
    "Term",
    "UsageError",
    "build_job",
    "features",
    "make_weights",
    "optimize",
    "prepare",
    "register_term",
    "setup",
    "stylize",
]
__version__ = "0.1.0"
