"""Loss terms: the registry (:mod:`nstjax.terms.registry`) and the built-in kinds.

Importing this package registers the built-in kinds; user code adds its own with
:func:`register` (re-exported here and as ``nstjax.register_term``).
"""

from nstjax.terms import gatys as _gatys  # noqa: F401  (registers mse, gram, tv)
from nstjax.terms import hist as _hist  # noqa: F401  (hist)
from nstjax.terms import patches as _patches  # noqa: F401  (mrf, relaxed_emd, selfsim)
from nstjax.terms import stats as _stats  # noqa: F401  (meanstd, mmd_*, w2, sliced_w2)
from nstjax.terms.registry import (
    KINDS,
    Kind,
    Term,
    TermConfig,
    get,
    kinds,
    parse,
    register,
    unique_names,
)

__all__ = [
    "KINDS",
    "Kind",
    "Term",
    "TermConfig",
    "get",
    "kinds",
    "parse",
    "register",
    "unique_names",
]
