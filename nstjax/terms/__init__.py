"""Loss terms: the registry (:mod:`nstjax.terms.registry`) and the built-in kinds.

The built-in kinds (``gatys``: mse, gram, tv; ``hist``; ``patches``: mrf, relaxed_emd,
selfsim; ``stats``: meanstd, mmd_*, w2, sliced_w2) are registered on the first lookup
(:func:`get`, :func:`kinds`, :func:`parse`, :func:`register`, :func:`registered`), not at
import: parsing a command needs no JAX. User code adds its own kinds with
:func:`register` (re-exported here and as ``nstjax.register_term``).
"""

from nstjax.terms.registry import (
    KINDS,
    Kind,
    Term,
    TermConfig,
    get,
    kinds,
    parse,
    register,
    registered,
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
    "registered",
    "unique_names",
]
