"""VGG19's layer table: names, parameter shapes, channels and map sizes (no JAX).

The settings schema (:mod:`nstjax.settings`) checks layer names against this table, so
a command can be parsed without importing JAX; :mod:`nstjax.vgg` re-exports every name
here beside the pooling, the rematerialized forward and the kernel preparation. Layer
names and pooling rounding are documented there.
"""

from __future__ import annotations

from collections.abc import Sequence

from nstjax.errors import UsageError

# (block, number of convs, output channels)
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))


def _build_tables():
    layers, shapes = [], {}
    cin = 3
    for block, n, cout in _BLOCKS:
        for i in range(1, n + 1):
            name = f"conv{block}_{i}"
            layers += [name, f"relu{block}_{i}"]
            shapes[name] = {"kernel": (3, 3, cin, cout), "bias": (cout,)}
            cin = cout
        layers.append(f"pool{block}")
    return tuple(layers), shapes


LAYERS, PARAM_SHAPES = _build_tables()
"""All layer names in forward order, and the shape of every parameter."""

CONV_LAYERS = tuple(PARAM_SHAPES)
LAYER_INDEX = {name: i for i, name in enumerate(LAYERS)}
POOLINGS = ("max", "avg")


def check_layers(names: Sequence[str], what: str = "layer") -> tuple[str, ...]:
    """Validates layer names; returns them as a tuple. Raises UsageError."""
    names = tuple(names)
    for name in names:
        if name not in LAYER_INDEX:
            raise UsageError(
                f"unknown {what} {name!r}; known layers are conv1_1..conv5_4, "
                "relu1_1..relu5_4 and pool1..pool5"
            )
    return names


def channels(layer: str) -> int:
    """Number of channels of a layer's output."""
    conv = "conv" + layer[4:] if layer.startswith("relu") else layer
    if conv.startswith("pool"):
        block = int(conv[4:])
        conv = [c for c in CONV_LAYERS if c.startswith(f"conv{block}_")][-1]
    return PARAM_SHAPES[conv]["kernel"][-1]


def downsampling(layer: str) -> int:
    """How many times the spatial size was halved before this layer's output.

    The exact output size of odd-sized maps depends on the rounding: see :func:`feature_hw`.
    """
    index = LAYER_INDEX[layer]
    return sum(1 for name in LAYERS[: index + 1] if name.startswith("pool"))


def pooled_size(n: int, ceil_mode: bool = False) -> int:
    """Rows (or columns) after one 2x2/2 pooling of ``n``: floor(n/2), or ceil(n/2)."""
    return (n + 1) // 2 if ceil_mode else n // 2


def feature_hw(layer: str, h: int, w: int, ceil_mode: bool = False) -> tuple[int, int]:
    """Height and width of ``layer``'s output for an ``h`` x ``w`` input image."""
    for _ in range(downsampling(check_layers([layer])[0])):
        h, w = pooled_size(h, ceil_mode), pooled_size(w, ceil_mode)
    return h, w


def receptive_radius(deepest: str) -> int:
    """Pixels on each side of a position's own block that its feature at ``deepest``
    depends on: each 3x3 convolution at downsampling s adds s (70 for relu5_1)."""
    radius, stride = 0, 1
    for name in LAYERS[: LAYER_INDEX[deepest] + 1]:
        if name in PARAM_SHAPES:
            radius += stride
        elif name.startswith("pool"):
            stride *= 2
    return radius


def halo(layers: Sequence[str], align: int = 16) -> int:
    """The receptive radius of the deepest of ``layers`` rounded up to ``align`` (70 ->
    80 px for relu5_1): the margin a crop needs for its inner features to be exact
    (``nstjax.tiles``; ``align`` keeps the pooling grids of crops lined up)."""
    deepest = max(layers, key=lambda name: LAYER_INDEX[name])
    return -(-receptive_radius(deepest) // align) * align
