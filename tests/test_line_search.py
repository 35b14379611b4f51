"""``--line-search N``: optax's zoom line search makes L-BFGS decrease monotonically."""

from __future__ import annotations

import numpy as np
import pytest

import nstjax
from nstjax.errors import UsageError


def test_line_search_decreases_every_step(images, real_weights):
    kw = dict(weights=real_weights, size=48, steps=12, conv_impl="xla")
    pair = (images / "tubingen.jpg", images / "starry_night.jpg")
    _, plain = nstjax.stylize(*pair, **kw)
    _, ls = nstjax.stylize(*pair, line_search=8, **kw)
    loss = np.asarray(ls["loss"])
    assert np.all(np.diff(loss) <= 1e-6 * loss[:-1]), loss  # never up
    assert np.any(np.diff(plain["loss"]) > 0)  # without it, this run spikes early
    assert ls["final"]["loss"] < plain["final"]["loss"]


def test_line_search_needs_lbfgs():
    with pytest.raises(UsageError, match="line_search is for optimizer lbfgs"):
        nstjax.Settings(optimizer="adam", line_search=5)
